package main

import (
	"context"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// ipamDriver allocates addresses for one attachment.
type ipamDriver interface {
	add(ctx context.Context, args *skel.CmdArgs, n *netConf) (*current.Result, error)
	del(ctx context.Context, args *skel.CmdArgs, n *netConf) error
	check(ctx context.Context, args *skel.CmdArgs, n *netConf) error
	gc(ctx context.Context, args *skel.CmdArgs, n *netConf) error
	status(ctx context.Context, args *skel.CmdArgs, n *netConf) error
}

func ipamFor(n *netConf) ipamDriver {
	if n.IPAM.Type == "host-local" {
		return inProcess{}
	}
	return delegate{}
}

// delegate runs the IPAM plugin binary named by ipam.type from CNI_PATH,
// as the reference bridge plugin does for every IPAM type.
type delegate struct{}

func (delegate) add(ctx context.Context, args *skel.CmdArgs, n *netConf) (*current.Result, error) {
	r, err := invoke.DelegateAdd(ctx, n.IPAM.Type, args.StdinData, nil)
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(r)
}

func (delegate) del(ctx context.Context, args *skel.CmdArgs, n *netConf) error {
	return invoke.DelegateDel(ctx, n.IPAM.Type, args.StdinData, nil)
}

func (delegate) check(ctx context.Context, args *skel.CmdArgs, n *netConf) error {
	return invoke.DelegateCheck(ctx, n.IPAM.Type, args.StdinData, nil)
}

func (delegate) gc(ctx context.Context, args *skel.CmdArgs, n *netConf) error {
	return invoke.DelegateGC(ctx, n.IPAM.Type, args.StdinData, nil)
}

func (delegate) status(ctx context.Context, args *skel.CmdArgs, n *netConf) error {
	return invoke.DelegateStatus(ctx, n.IPAM.Type, args.StdinData, nil)
}

// inProcess allocates from host-local's files without running a binary.
// Until the ipam package lands it delegates like any other type.
type inProcess struct{ delegate }
