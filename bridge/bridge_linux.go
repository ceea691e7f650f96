package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
)

// Re-exported sentinels; see package podnet.
var (
	ErrNotFound = podnet.ErrNotFound
	ErrConflict = podnet.ErrConflict
	ErrInvalid  = podnet.ErrInvalid
)

// Spec describes a bridge. The zero value of every optional field is correct.
type Spec struct {
	Name    string // required, at most 15 bytes
	MTU     int    // 0 keeps the kernel default (or the current MTU)
	Promisc bool   // turn promiscuous mode on (never turned off by Ensure)
}

// Bridge is a bridge as it exists in a namespace.
type Bridge struct {
	Name    string
	Index   int
	MTU     int
	MAC     net.HardwareAddr
	Up      bool
	Promisc bool
}

// Validate reports the first problem with s as an error matching ErrInvalid.
func (s Spec) Validate() error {
	if err := link.ValidateName(s.Name); err != nil {
		return err
	}
	if s.MTU != 0 && (s.MTU < 68 || s.MTU > 65535) {
		return podnet.Invalid("bridge MTU %d: outside 68..65535", s.MTU)
	}
	return nil
}

// Ensure creates the bridge, or converges an existing one to spec (MTU,
// promiscuous mode, up). It fails with ErrConflict when a link of another type
// has the name, without changing it. A bridge Ensure created is removed again
// if converging it fails.
//
// Equivalent to: ip link add NAME type bridge; ip link set NAME mtu MTU up
func Ensure(ns *netns.NS, spec Spec) (*Bridge, error) {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "ensure", Kind: "bridge", Name: spec.Name, NetNS: ns.String(), Err: err}
	}
	if err := spec.Validate(); err != nil {
		return nil, opErr(err)
	}
	h, err := nl.Handle(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()

	created := false
	l, err := h.LinkByName(spec.Name)
	switch {
	case nl.IsNotFound(err):
		la := netlink.NewLinkAttrs()
		la.Name = spec.Name
		la.MTU = spec.MTU
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil && !nl.IsExist(err) {
			return nil, opErr(err)
		}
		created = true
		if l, err = h.LinkByName(spec.Name); err != nil {
			return nil, opErr(nl.Err(err))
		}
	case err != nil:
		return nil, opErr(err)
	}
	if l.Type() != "bridge" {
		return nil, opErr(fmt.Errorf("%w: link is of type %s", ErrConflict, l.Type()))
	}
	if err := converge(h, l, spec); err != nil {
		if created {
			h.LinkDel(l)
		}
		return nil, opErr(err)
	}
	if l, err = h.LinkByIndex(l.Attrs().Index); err != nil {
		return nil, opErr(nl.Err(err))
	}
	return bridgeOf(l), nil
}

func converge(h *netlink.Handle, l netlink.Link, spec Spec) error {
	a := l.Attrs()
	if spec.MTU != 0 && a.MTU != spec.MTU {
		if err := h.LinkSetMTU(l, spec.MTU); err != nil {
			return fmt.Errorf("set mtu %d: %w", spec.MTU, err)
		}
	}
	if spec.Promisc && a.Promisc == 0 {
		if err := h.SetPromiscOn(l); err != nil {
			return fmt.Errorf("set promisc: %w", err)
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set up: %w", err)
		}
	}
	return nil
}

func bridgeOf(l netlink.Link) *Bridge {
	a := l.Attrs()
	return &Bridge{
		Name: a.Name, Index: a.Index, MTU: a.MTU, MAC: a.HardwareAddr,
		Up: a.Flags&net.FlagUp != 0, Promisc: a.Promisc != 0,
	}
}

// Get returns the bridge named name. ErrNotFound if absent, ErrConflict if
// the link is not a bridge.
//
// Equivalent to: ip -d link show NAME type bridge
func Get(ns *netns.NS, name string) (*Bridge, error) {
	h, l, err := lookup(ns, "get", name)
	if err != nil {
		return nil, err
	}
	h.Close()
	return bridgeOf(l), nil
}

// Delete removes the bridge; its ports are detached by the kernel, not
// deleted. A missing bridge is not an error; a link of another type is
// ErrConflict.
//
// Equivalent to: ip link del NAME
func Delete(ns *netns.NS, name string) error {
	h, l, err := lookup(ns, "delete", name)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	defer h.Close()
	if err := h.LinkDel(l); err != nil && !nl.IsNotFound(err) {
		return &podnet.OpError{Op: "delete", Kind: "bridge", Name: name, NetNS: ns.String(), Err: err}
	}
	return nil
}

// SetPromisc turns promiscuous mode of the bridge on or off.
//
// Equivalent to: ip link set NAME promisc on|off
func SetPromisc(ns *netns.NS, name string, on bool) error {
	h, l, err := lookup(ns, "set promisc on", name)
	if err != nil {
		return err
	}
	defer h.Close()
	if on {
		err = h.SetPromiscOn(l)
	} else {
		err = h.SetPromiscOff(l)
	}
	if err != nil {
		return &podnet.OpError{Op: "set promisc on", Kind: "bridge", Name: name, NetNS: ns.String(), Err: err}
	}
	return nil
}

// AddrOptions tune EnsureAddr.
type AddrOptions struct {
	// Replace allows removing addresses of the same family whose subnet
	// overlaps addr's (the reference plugin's forceAddress). Without it
	// such an address makes EnsureAddr fail with ErrConflict.
	Replace bool
}

// EnsureAddr makes addr (e.g. 10.200.0.1/24, the pod gateway) an address of
// the bridge. It is a no-op when present. Another address on the bridge in
// an overlapping subnet of the same family is ErrConflict unless
// opts.Replace; addresses in other subnets are left alone.
//
// Equivalent to: ip addr add ADDR dev NAME (after ip addr del OLD with Replace)
func EnsureAddr(ns *netns.NS, name string, addr netip.Prefix, opts AddrOptions) error {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "ensure address " + addr.String() + " on", Kind: "bridge", Name: name, NetNS: ns.String(), Err: err}
	}
	if !addr.IsValid() || addr.Addr().Zone() != "" || addr.Addr().IsUnspecified() {
		return opErr(podnet.Invalid("address %q", addr))
	}
	h, l, err := lookup(ns, "ensure address on", name)
	if err != nil {
		return err
	}
	defer h.Close()
	family := netlink.FAMILY_V4
	if addr.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	// Only this link's addresses: AddrList would make the kernel walk every
	// link of ns, one per pod on a node.
	have, err := nl.AddrsOf(ns, l.Attrs().Index, family)
	if err != nil {
		return opErr(err)
	}
	var clash []nl.LinkAddr
	for _, a := range have {
		p := a.Prefix
		if p == addr {
			return nil
		}
		if p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if p.Masked().Overlaps(addr.Masked()) {
			clash = append(clash, a)
		}
	}
	if len(clash) > 0 && !opts.Replace {
		return opErr(fmt.Errorf("%w: bridge has %s", ErrConflict, clash[0].Prefix))
	}
	for _, a := range clash {
		old := &netlink.Addr{IPNet: nl.IPNet(a.Prefix), Peer: nl.IPNet(a.Peer)}
		if err := h.AddrDel(l, old); err != nil && !nl.IsNotFound(err) {
			return opErr(fmt.Errorf("remove %s: %w", a.Prefix, err))
		}
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: nl.IPNet(addr)}); err != nil && !nl.IsExist(err) {
		return opErr(err)
	}
	return nil
}

// Addrs returns the bridge's addresses of both families, link-local
// included.
//
// Equivalent to: ip addr show dev NAME
func Addrs(ns *netns.NS, name string) ([]netip.Prefix, error) {
	h, l, err := lookup(ns, "list addresses of", name)
	if err != nil {
		return nil, err
	}
	h.Close()
	have, err := nl.AddrsOf(ns, l.Attrs().Index, netlink.FAMILY_ALL)
	if err != nil {
		return nil, &podnet.OpError{Op: "list addresses of", Kind: "bridge", Name: name, NetNS: ns.String(), Err: err}
	}
	out := make([]netip.Prefix, 0, len(have))
	for _, a := range have {
		out = append(out, a.Prefix)
	}
	return out, nil
}

// PortOptions tune Attach.
type PortOptions struct {
	// Hairpin lets frames leave through the port they came in on, so a pod
	// can reach itself through a Service address.
	Hairpin bool
}

// Attach makes the link named port a port of the bridge, and sets its
// hairpin mode as asked. Attaching a port that is already attached to this
// bridge only converges hairpin mode, so it is also how a port created on
// the bridge gets hairpin mode.
//
// A new veth joins a bridge faster when it is born on it:
// veth.Spec.MasterIndex does at creation what Attach does afterwards,
// without the extra request and with the port enabled by the kernel in
// the background (see WaitForwarding). Attach is for links that already
// exist.
//
// Equivalent to: ip link set PORT master NAME; bridge link set dev PORT hairpin on|off
func Attach(ns *netns.NS, name, port string, opts PortOptions) error {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "attach " + fmt.Sprintf("%q", port) + " to", Kind: "bridge", Name: name, NetNS: ns.String(), Err: err}
	}
	if err := link.ValidateName(port); err != nil {
		return opErr(err)
	}
	h, br, err := lookup(ns, "attach to", name)
	if err != nil {
		return err
	}
	defer h.Close()
	pl, err := h.LinkByName(port)
	if err != nil {
		return opErr(nl.Err(err))
	}
	joined := pl.Attrs().MasterIndex != br.Attrs().Index
	if joined {
		if err := h.LinkSetMasterByIndex(pl, br.Attrs().Index); err != nil {
			return opErr(err)
		}
		if !opts.Hairpin {
			return nil // a new port starts with hairpin mode off
		}
	}
	if err := h.LinkSetHairpin(pl, opts.Hairpin); err != nil {
		if joined {
			h.LinkSetNoMaster(pl)
		}
		return opErr(fmt.Errorf("set hairpin: %w", err))
	}
	return nil
}

// WaitForwarding waits until the bridge port named port forwards frames,
// or ctx is done. A port that joined its bridge while down (see
// veth.Spec.MasterIndex) starts forwarding only when the kernel has seen
// its carrier come up, which its link-watch worker does shortly after; a
// port that joined while up forwards at once, and this returns at the
// first look. It fails with ErrNotFound if the link does not exist, with
// ErrConflict if it is not a bridge port, and with ctx's error (and the
// port's state) if ctx ends first.
//
// Equivalent to: bridge link show dev PORT, until "state forwarding"
func WaitForwarding(ctx context.Context, ns *netns.NS, port string) error {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "wait for forwarding on", Kind: "port", Name: port, NetNS: ns.String(), Err: err}
	}
	if err := link.ValidateName(port); err != nil {
		return opErr(err)
	}
	var timer *time.Timer
	for pause := 50 * time.Microsecond; ; pause = min(2*pause, 10*time.Millisecond) {
		state, isPort, err := nl.PortState(ns, port)
		switch {
		case err != nil:
			return opErr(err)
		case !isPort:
			return opErr(fmt.Errorf("%w: not a bridge port", ErrConflict))
		case state == nl.PortForwarding:
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(pause)
			defer timer.Stop()
		} else {
			timer.Reset(pause)
		}
		select {
		case <-ctx.Done():
			return opErr(fmt.Errorf("port state %d: %w", state, ctx.Err()))
		case <-timer.C:
		}
	}
}

// Detach removes the link named port from whatever bridge it is attached
// to. A missing link or one attached nowhere is not an error.
//
// Equivalent to: ip link set PORT nomaster
func Detach(ns *netns.NS, port string) error {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "detach", Kind: "port", Name: port, NetNS: ns.String(), Err: err}
	}
	if err := link.ValidateName(port); err != nil {
		return opErr(err)
	}
	h, pl, err := nl.Link(ns, port)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return opErr(err)
	}
	defer h.Close()
	if pl.Attrs().MasterIndex == 0 {
		return nil
	}
	if err := h.LinkSetNoMaster(pl); err != nil && !nl.IsNotFound(err) {
		return opErr(err)
	}
	return nil
}

// Port is one port of a bridge.
type Port struct {
	Name    string
	Index   int
	Hairpin bool
	Up      bool
}

// Ports lists the bridge's ports sorted by ifindex.
//
// Equivalent to: brctl show NAME; bridge link show master NAME
func Ports(ns *netns.NS, name string) ([]Port, error) {
	h, br, err := lookup(ns, "list ports of", name)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	all, err := nl.Dump(h.LinkList)
	if err != nil {
		return nil, &podnet.OpError{Op: "list ports of", Kind: "bridge", Name: name, NetNS: ns.String(), Err: err}
	}
	var ports []Port
	for _, l := range all {
		a := l.Attrs()
		if a.MasterIndex != br.Attrs().Index {
			continue
		}
		p := Port{Name: a.Name, Index: a.Index, Up: a.Flags&net.FlagUp != 0}
		if a.Protinfo != nil {
			p.Hairpin = a.Protinfo.Hairpin
		} else if pi, err := h.LinkGetProtinfo(l); err == nil {
			p.Hairpin = pi.Hairpin
		}
		ports = append(ports, p)
	}
	slices.SortFunc(ports, func(a, b Port) int { return a.Index - b.Index })
	return ports, nil
}

// lookup opens a handle in ns and finds the bridge name; on success the
// caller closes the handle.
func lookup(ns *netns.NS, op, name string) (*netlink.Handle, netlink.Link, error) {
	opErr := func(err error) error {
		return &podnet.OpError{Op: op, Kind: "bridge", Name: name, NetNS: ns.String(), Err: err}
	}
	if err := link.ValidateName(name); err != nil {
		return nil, nil, opErr(err)
	}
	h, l, err := nl.Link(ns, name)
	if err != nil {
		return nil, nil, opErr(err)
	}
	if l.Type() != "bridge" {
		h.Close()
		return nil, nil, opErr(fmt.Errorf("%w: link is of type %s", ErrConflict, l.Type()))
	}
	return h, l, nil
}
