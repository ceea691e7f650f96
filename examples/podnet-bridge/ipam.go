package main

import (
	"context"
	"time"

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

// lockTimeout bounds the wait for the IPAM data directory's lock; a
// runtime retries on the "try again later" error it then gets.
const lockTimeout = 60 * time.Second

func (inProcess) add(ctx context.Context, args *skel.CmdArgs, _ *netConf) (*current.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, lockTimeout)
	defer cancel()
	r, _, err := hostlocal.Add(ctx, args)
	return r, err
}

func (inProcess) del(ctx context.Context, args *skel.CmdArgs, _ *netConf) error {
	return bounded(ctx, args, hostlocal.Del)
}

func (inProcess) check(ctx context.Context, args *skel.CmdArgs, _ *netConf) error {
	return bounded(ctx, args, hostlocal.Check)
}

func (inProcess) gc(ctx context.Context, args *skel.CmdArgs, _ *netConf) error {
	return bounded(ctx, args, hostlocal.GC)
}

func (inProcess) status(ctx context.Context, args *skel.CmdArgs, _ *netConf) error {
	return bounded(ctx, args, hostlocal.Status)
}

// bounded runs a host-local verb with the lock wait bounded by lockTimeout.
func bounded(ctx context.Context, args *skel.CmdArgs, verb func(context.Context, *skel.CmdArgs) error) error {
	ctx, cancel := context.WithTimeout(ctx, lockTimeout)
	defer cancel()
	return verb(ctx, args)
}
