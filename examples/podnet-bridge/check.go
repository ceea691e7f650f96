package main

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/cni"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/veth"
)

// cmdCheck verifies that what ADD reported is still in place: the bridge,
// the pod's interface and its veth peer on the bridge, the MTU, the
// addresses and routes in the pod, and the masquerade rules.
func cmdCheck(args *skel.CmdArgs) error {
	n, err := loadAttachment(args)
	if err != nil {
		return err
	}
	if n.RawPrevResult == nil {
		return fmt.Errorf("check: prevResult is required")
	}
	if err := version.ParsePrevResult(&n.NetConf); err != nil {
		return err
	}
	prev, err := current.NewResultFromResult(n.PrevResult)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if n.IPAM.Type != "" {
		if err := ipamFor(n).check(ctx, args, n); err != nil {
			return err
		}
	}
	host, err := netns.Current()
	if err != nil {
		return err
	}
	defer host.Close()
	pod, err := netns.Open(args.Netns)
	if err != nil {
		return err
	}
	defer pod.Close()

	br, err := bridge.Get(host, n.Bridge)
	if err != nil {
		return err
	}
	if br.Promisc != n.PromiscMode {
		return fmt.Errorf("check: bridge %q promiscuous mode is %v, configured %v", n.Bridge, br.Promisc, n.PromiscMode)
	}
	podEnd, err := veth.Get(pod, args.IfName)
	if err != nil {
		return err
	}
	hostEnd, err := veth.Peer(pod, args.IfName, host)
	if err != nil {
		return err
	}
	if hostEnd.Master != br.Index {
		return fmt.Errorf("check: veth %q (peer of %s) is not a port of bridge %q", hostEnd.Name, args.IfName, n.Bridge)
	}
	if n.MTU != 0 && (podEnd.MTU != n.MTU || hostEnd.MTU != n.MTU) {
		return fmt.Errorf("check: MTU of %s/%s is %d/%d, configured %d", args.IfName, hostEnd.Name, podEnd.MTU, hostEnd.MTU, n.MTU)
	}
	for _, ifc := range prev.Interfaces {
		if ifc.Sandbox != "" && ifc.Name == args.IfName && ifc.Mac != "" && ifc.Mac != podEnd.MAC.String() {
			return fmt.Errorf("check: %s has MAC %s, prevResult says %s", args.IfName, podEnd.MAC, ifc.Mac)
		}
	}

	if err := cni.CheckIface(pod, args.IfName, prev); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	if n.IPMasq {
		if err := checkMasquerade(host, n, prev.IPs); err != nil {
			return err
		}
	}
	return nil
}
