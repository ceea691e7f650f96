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

	a := &addition{ctx: context.Background(), args: args, n: n, host: host, pod: pod}
	defer func() {
		if err != nil {
			a.cleanup.run()
		}
	}()
	if err := a.createLink(); err != nil {
		return err
	}
	if n.IPAM.Type != "" { // without IPAM the attachment is layer 2 only
		if err := a.addresses(); err != nil {
			return err
		}
		if err := a.tellPolicy(); err != nil {
			return err
		}
	}
	return a.answer()
}

// addition is one ADD in progress. Every step that makes something pushes
// its removal onto cleanup, which cmdAdd runs if a later step fails.
type addition struct {
	ctx       context.Context
	args      *skel.CmdArgs
	n         *netConf
	host, pod *netns.NS
	pair      *veth.Pair
	result    *current.Result
	cleanup   undo
}

// createLink ensures the bridge and plugs the pod into it with a veth pair.
// The bridge is shared by the network's pods, so a failed ADD leaves it.
func (a *addition) createLink() error {
	n := a.n
	br, err := bridge.Ensure(a.host, bridge.Spec{Name: n.Bridge, MTU: n.MTU, Promisc: n.PromiscMode})
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
	// of this ADD, work that grows with the ports of the bridge. answer
	// waits for it.
	pair, err := veth.Create(a.host, veth.Spec{
		PeerName: a.args.IfName, PeerNS: a.pod, MTU: n.MTU, PeerMAC: n.mac,
		AddrGenModeNone: true, PeerAddrGenModeNone: n.ipv4Only(),
		MasterIndex: br.Index,
	})
	if err != nil {
		return err
	}
	a.cleanup.push(func() { veth.Delete(a.host, pair.Name) })
	a.pair = pair
	if n.HairpinMode {
		if err := bridge.Attach(a.host, n.Bridge, pair.Name, bridge.PortOptions{Hairpin: true}); err != nil {
			return err
		}
	}
	a.result = &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: br.Name, Mac: br.MAC.String()},
			{Name: pair.Name, Mac: pair.MAC.String()},
			{Name: a.args.IfName, Mac: pair.PeerMAC.String(), Sandbox: a.args.Netns},
		},
	}
	return nil
}

// addresses gets the pod its addresses, configures them with the bridge as
// gateway where asked, and masquerades the network.
func (a *addition) addresses() error {
	if err := a.runIPAM(); err != nil {
		return err
	}
	gateways, err := gatewaysOf(a.result, a.n)
	if err != nil {
		return err
	}
	if err := cni.ConfigureIface(a.pod, a.args.IfName, a.result); err != nil {
		return err
	}
	if a.n.IsGateway {
		if err := a.ensureGateways(gateways); err != nil {
			return err
		}
	}
	if a.n.IPMasq {
		if err := ensureMasquerade(a.host, a.n, a.result.IPs); err != nil {
			return err
		}
	}
	// The bridge's MAC can change when its first port joins; report the
	// current one.
	if br, err := bridge.Get(a.host, a.n.Bridge); err == nil {
		a.result.Interfaces[0].Mac = br.MAC.String()
	}
	if dnsSet(a.n.DNS) {
		a.result.DNS = a.n.DNS
	}
	return nil
}

// runIPAM allocates the pod's addresses and puts them in the result.
func (a *addition) runIPAM() error {
	drv := ipamFor(a.n)
	res, err := drv.add(a.ctx, a.args, a.n)
	if err != nil {
		return err
	}
	a.cleanup.push(func() { drv.del(a.ctx, a.args, a.n) })
	if len(res.IPs) == 0 {
		return errors.New("IPAM returned no address")
	}
	a.result.IPs, a.result.Routes, a.result.DNS = res.IPs, res.Routes, res.DNS
	return nil
}

// ensureGateways gives the bridge the gateway addresses and turns on IP
// forwarding for their families. Neither is undone on failure: other pods
// of the network may already rely on them.
func (a *addition) ensureGateways(gateways []netip.Prefix) error {
	for _, gw := range gateways {
		if err := bridge.EnsureAddr(a.host, a.n.Bridge, gw, bridge.AddrOptions{Replace: a.n.ForceAddress}); err != nil {
			return err
		}
		if err := route.SetForwarding(a.host, familyOf(gw.Addr()), true); err != nil {
			return err
		}
	}
	return nil
}

// answer prints the result once the pod's port forwards, so that the pod
// can send as soon as the runtime starts it.
func (a *addition) answer() error {
	ctx, cancel := context.WithTimeout(a.ctx, portTimeout)
	defer cancel()
	if err := bridge.WaitForwarding(ctx, a.host, a.pair.Name); err != nil {
		return err
	}
	return printResult(a.result, a.n)
}

// portTimeout bounds the wait for a new bridge port to forward. The kernel
// gets there at once unless the machine is overloaded; the bound keeps a
// stuck port from hanging ADD.
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
