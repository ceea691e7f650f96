package main

import (
	"context"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/ipam/hostlocal"
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

// inProcess is host-local run inside this process: the same configuration
// keys and the same files under dataDir as the reference host-local, so a
// node can switch plugins in either direction, without the cost of starting
// another program on every call.
type inProcess struct{}

func (inProcess) add(_ context.Context, args *skel.CmdArgs, _ *netConf) (*current.Result, error) {
	r, _, err := hostlocal.Add(args)
	return r, err
}

func (inProcess) del(_ context.Context, args *skel.CmdArgs, _ *netConf) error {
	return hostlocal.Del(args)
}

func (inProcess) check(_ context.Context, args *skel.CmdArgs, _ *netConf) error {
	return hostlocal.Check(args)
}

func (inProcess) gc(_ context.Context, args *skel.CmdArgs, _ *netConf) error {
	return hostlocal.GC(args)
}

func (inProcess) status(_ context.Context, args *skel.CmdArgs, _ *netConf) error {
	return hostlocal.Status(args)
}
