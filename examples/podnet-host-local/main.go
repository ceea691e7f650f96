// Command podnet-host-local is an IPAM plugin that is a drop-in for the
// reference host-local plugin: same configuration keys (ranges, routes,
// dataDir, resolvConf, CNI_ARGS IP=, the "ips" and "ipRanges" capabilities)
// and the same files under dataDir, so a node can switch between the two in
// either direction. Unlike host-local it answers a repeated ADD with the
// lease the attachment already has, keeps an index instead of scanning the
// directory on every call, and implements STATUS.
//
// Build it with
//
//	go build -o DIR/podnet-host-local ./examples/podnet-host-local
//
// and name it in a network configuration as "ipam": {"type": "podnet-host-local", ...}.
package main

import (
	"context"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/ipam/hostlocal"
)

// lockTimeout bounds the wait for the data directory's lock; a runtime
// retries on the "try again later" error it then gets.
const lockTimeout = 60 * time.Second

// verb gives a hostlocal verb the context every call runs under.
func verb(fn func(context.Context, *skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		ctx, cancel := context.WithTimeout(context.Background(), lockTimeout)
		defer cancel()
		return fn(ctx, args)
	}
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add: verb(func(ctx context.Context, args *skel.CmdArgs) error {
			result, cniVersion, err := hostlocal.Add(ctx, args)
			if err != nil {
				return err
			}
			return types.PrintResult(result, cniVersion)
		}),
		Del:    verb(hostlocal.Del),
		Check:  verb(hostlocal.Check),
		GC:     verb(hostlocal.GC),
		Status: verb(hostlocal.Status),
	}, version.All, "podnet-host-local: host-local compatible IPAM")
}
