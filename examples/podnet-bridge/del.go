package main

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/podnet/podnet/netns"
)

// cmdDel removes what ADD made for this attachment: the pod's interface
// (and with it the host-side veth: retired at once, deleted by a detached
// child, see retire), the address lease, and the reference plugin's
// per-container masquerade chain if a migrated node still has one, and
// tells the NetworkPolicy agent, if configured, to forget its addresses.
// The bridge and the per-network masquerade rules stay. It succeeds when
// everything is already gone, and when the pod's namespace no longer exists.
func cmdDel(args *skel.CmdArgs) error {
	n, err := loadAttachment(args)
	if err != nil {
		return err
	}
	ctx := context.Background()
	host, err := netns.Current()
	if err != nil {
		return err
	}
	defer host.Close()
	if args.Netns != "" {
		pod, err := netns.Open(args.Netns)
		switch {
		case errors.Is(err, netns.ErrNotFound):
			// The runtime already removed the namespace; its veth died
			// with it.
		case err != nil:
			return err
		default:
			err = retire(pod, host, args.IfName)
			pod.Close()
			if err != nil {
				return err
			}
		}
	}
	// Before the addresses are freed for another pod.
	forgetPolicy(n, args.ContainerID, args.Args)
	if n.IPAM.Type != "" {
		if err := ipamFor(n).del(ctx, args, n); err != nil {
			return err
		}
	}
	if n.IPMasq {
		if err := removeLegacyMasquerade(host, n, args.IfName, args.ContainerID); err != nil {
			return err
		}
	}
	return nil
}
