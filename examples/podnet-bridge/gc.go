package main

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/netns"
)

// cmdGC releases the leases of every attachment not listed in
// cni.dev/valid-attachments, deletes retired veths whose deletion did not
// complete, and the reference plugin's per-container masquerade chains of
// containers that are gone.
func cmdGC(args *skel.CmdArgs) error {
	n, err := loadConf(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if n.IPAM.Type != "" {
		if err := ipamFor(n).gc(ctx, args, n); err != nil {
			return err
		}
	}
	host, err := netns.Current()
	if err != nil {
		return err
	}
	defer host.Close()
	if err := reapTombstones(host); err != nil {
		return err
	}
	if n.IPMasq {
		return gcLegacyMasquerade(host, n)
	}
	return nil
}

// cmdStatus reports whether ADD can succeed: not ready (code 50) when the
// address store is unusable.
func cmdStatus(args *skel.CmdArgs) error {
	n, err := loadConf(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	if n.IPAM.Type == "" {
		return nil
	}
	if err := ipamFor(n).status(context.Background(), args, n); err != nil {
		return types.NewError(codeNotReady, "IPAM not ready", err.Error())
	}
	return nil
}

// codeNotReady is the spec's "plugin not available" (50), which STATUS
// returns while ADD cannot succeed.
const codeNotReady uint = 50
