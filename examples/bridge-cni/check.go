package main

import (
	"context"
	"fmt"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/route"
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

	have, err := addr.List(pod, args.IfName)
	if err != nil {
		return err
	}
	for _, ipc := range prev.IPs {
		if want := nl.Prefix(&ipc.Address); !slices.Contains(have, want) {
			return fmt.Errorf("check: %s in netns %q lacks address %s", args.IfName, args.Netns, want)
		}
	}
	routes, err := route.List(pod, route.Filter{})
	if err != nil {
		return err
	}
	for _, rt := range prev.Routes {
		dst := nl.Prefix(&rt.Dst).Masked()
		gw := nl.Addr(rt.GW)
		found := slices.ContainsFunc(routes, func(r route.Route) bool {
			return r.Dst == dst && (!gw.IsValid() || r.Gateway == gw)
		})
		if !found {
			return fmt.Errorf("check: netns %q lacks route %s via %v", args.Netns, dst, rt.GW)
		}
	}
	if n.IPMasq {
		if err := checkMasquerade(host, n, prev.IPs); err != nil {
			return err
		}
	}
	return nil
}
