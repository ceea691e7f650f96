package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/cni"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

// undo runs cleanup steps in reverse order unless disarmed: whatever an ADD
// made before it failed is removed again.
type undo []func()

func (u *undo) push(f func()) { *u = append(*u, f) }
func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

func cmdAdd(args *skel.CmdArgs) (err error) {
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
	pod, err := netns.Open(args.Netns)
	if err != nil {
		return configError(types.ErrInvalidEnvironmentVariables, "open pod netns %q: %v", args.Netns, err)
	}
	defer pod.Close()

	var cleanup undo
	defer func() {
		if err != nil {
			cleanup.run()
		}
	}()

	br, err := bridge.Ensure(host, bridge.Spec{Name: n.Bridge, MTU: n.MTU, Promisc: n.PromiscMode})
	if err != nil {
		return err
	}
	// No IPv6 link-local address on the host side, a bridge port that needs
	// no address of its own, nor on the pod side of an IPv4-only network,
	// whose duplicate address detection, MLD reports and router
	// solicitations would reach every pod on the bridge. Each such address
	// also adds routes to the node's IPv6 table that the kernel walks on
	// every link change. Set over netlink before the links come up: a write
	// under /proc/sys/net costs a path lookup that grows with the
	// namespaces on the node.
	//
	// The host side joins the bridge while still down: the kernel then
	// makes it forward in its link-watch worker, in parallel with the rest
	// of this ADD, work that grows with the ports of the bridge. ADD waits
	// for it at the end.
	pair, err := veth.Create(host, veth.Spec{
		PeerName: args.IfName, PeerNS: pod, MTU: n.MTU, PeerMAC: n.mac,
		AddrGenModeNone: true, PeerAddrGenModeNone: n.ipv4Only(),
		MasterIndex: br.Index,
	})
	if err != nil {
		return err
	}
	cleanup.push(func() { veth.Delete(host, pair.Name) })
	if n.HairpinMode {
		if err := bridge.Attach(host, n.Bridge, pair.Name, bridge.PortOptions{Hairpin: true}); err != nil {
			return err
		}
	}

	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: br.Name, Mac: br.MAC.String()},
			{Name: pair.Name, Mac: pair.MAC.String()},
			{Name: args.IfName, Mac: pair.PeerMAC.String(), Sandbox: args.Netns},
		},
	}
	// The answer waits until the port forwards, which the kernel makes it
	// do in parallel with the rest of ADD.
	answer := func() error {
		ctx, cancel := context.WithTimeout(ctx, portTimeout)
		defer cancel()
		if err := bridge.WaitForwarding(ctx, host, pair.Name); err != nil {
			return err
		}
		return printResult(result, n)
	}
	if n.IPAM.Type == "" { // layer 2 only
		return answer()
	}

	drv := ipamFor(n)
	ipamRes, err := drv.add(ctx, args, n)
	if err != nil {
		return err
	}
	cleanup.push(func() { drv.del(ctx, args, n) })
	if len(ipamRes.IPs) == 0 {
		return errors.New("IPAM returned no address")
	}
	result.IPs, result.Routes, result.DNS = ipamRes.IPs, ipamRes.Routes, ipamRes.DNS

	gateways, err := gatewaysOf(result, n)
	if err != nil {
		return err
	}
	if err := cni.ConfigureIface(pod, args.IfName, result); err != nil {
		return err
	}
	if n.IsGateway {
		for _, gw := range gateways {
			if err := bridge.EnsureAddr(host, n.Bridge, gw, bridge.AddrOptions{Replace: n.ForceAddress}); err != nil {
				return err
			}
			if err := route.SetForwarding(host, familyOf(gw.Addr()), true); err != nil {
				return err
			}
		}
	}
	if n.IPMasq {
		if err := ensureMasquerade(host, n, result.IPs); err != nil {
			return err
		}
	}
	// The bridge's MAC can change when its first port joins; report the
	// current one.
	if br, err = bridge.Get(host, n.Bridge); err == nil {
		result.Interfaces[0].Mac = br.MAC.String()
	}
	if dnsSet(n.DNS) {
		result.DNS = n.DNS
	}
	return answer()
}

// portTimeout bounds the wait for a new bridge port to forward, which
// takes the kernel well under a millisecond unless the machine is
// overloaded.
const portTimeout = 5 * time.Second

func printResult(r *current.Result, n *netConf) error {
	return types.PrintResult(r, n.CNIVersion)
}

// gatewaysOf fills in the gateway of every address (the first address of
// its subnet when IPAM gave none and the bridge is the gateway), adds a
// default route per family for isDefaultGateway, and returns the gateway
// addresses the bridge must carry.
func gatewaysOf(r *current.Result, n *netConf) ([]netip.Prefix, error) {
	var gws []netip.Prefix
	hasDefault := map[route.Family]bool{}
	for _, rt := range r.Routes {
		if ones, _ := rt.Dst.Mask.Size(); ones == 0 && rt.GW != nil {
			hasDefault[familyOf(cni.Addr(rt.Dst.IP))] = true
		}
	}
	for _, ipc := range r.IPs {
		ipc.Interface = current.Int(2)
		p := cni.Prefix(ipc.Address)
		if !p.IsValid() {
			return nil, fmt.Errorf("IPAM returned an invalid address %v", ipc.Address)
		}
		if ipc.Gateway == nil && n.IsGateway {
			ipc.Gateway = cni.IP(p.Masked().Addr().Next())
		}
		fam := familyOf(p.Addr())
		if n.IsDefaultGateway && !hasDefault[fam] && ipc.Gateway != nil {
			dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
			if fam == route.IPv6 {
				dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			r.Routes = append(r.Routes, &types.Route{Dst: dst, GW: ipc.Gateway})
			hasDefault[fam] = true
		}
		if n.IsGateway && ipc.Gateway != nil {
			gws = append(gws, netip.PrefixFrom(cni.Addr(ipc.Gateway), p.Bits()))
		}
	}
	return gws, nil
}

func familyOf(a netip.Addr) route.Family { return podnet.FamilyOf(a) }

func dnsSet(d types.DNS) bool {
	return d.Nameservers != nil || d.Search != nil || d.Options != nil || d.Domain != ""
}

// ipv4Only reports whether the configuration's IPAM ranges are all IPv4.
func (n *netConf) ipv4Only() bool {
	subs := n.rangeSubnets()
	for _, p := range subs {
		if p.Addr().Is6() {
			return false
		}
	}
	return len(subs) > 0
}
