package addr

import (
	"errors"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
)

// Re-exported sentinels; see package podnet.
var (
	ErrNotFound = podnet.ErrNotFound
	ErrInvalid  = podnet.ErrInvalid
)

func validate(dev string, p netip.Prefix) error {
	if err := link.ValidateName(dev); err != nil {
		return err
	}
	if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().IsUnspecified() || p.Addr().IsMulticast() {
		return podnet.Invalid("address %q", p)
	}
	return nil
}

// Ensure adds p (address and prefix length, e.g. 10.200.0.4/24) to the link
// dev in ns. It is a no-op when the address is already there; other
// addresses are left alone. The kernel adds the connected route.
//
// Equivalent to: ip addr add P dev DEV
func Ensure(ns *netns.NS, dev string, p netip.Prefix) error {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "add address " + p.String() + " to", Kind: "link", Name: dev, NetNS: ns.String(), Err: err}
	}
	if err := validate(dev, p); err != nil {
		return opErr(err)
	}
	h, l, err := nl.Link(ns, dev)
	if err != nil {
		return opErr(err)
	}
	defer h.Close()
	a := &netlink.Addr{IPNet: nl.IPNet(p)}
	if p.Addr().Is6() {
		// A pod's address must work at once; duplicate detection would
		// hold it "tentative" for a second or more.
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil && !nl.IsExist(err) {
		return opErr(err)
	}
	return nil
}

// Delete removes p from dev. A missing address or link is not an error.
//
// Equivalent to: ip addr del P dev DEV
func Delete(ns *netns.NS, dev string, p netip.Prefix) error {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "delete address " + p.String() + " from", Kind: "link", Name: dev, NetNS: ns.String(), Err: err}
	}
	if err := validate(dev, p); err != nil {
		return opErr(err)
	}
	h, l, err := nl.Link(ns, dev)
	if nl.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return opErr(err)
	}
	defer h.Close()
	if err := h.AddrDel(l, &netlink.Addr{IPNet: nl.IPNet(p)}); err != nil && !nl.IsNotFound(err) && !isNoAddr(err) {
		return opErr(err)
	}
	return nil
}

// List returns the addresses of dev (both families, link-local included).
//
// Equivalent to: ip addr show dev DEV
func List(ns *netns.NS, dev string) ([]netip.Prefix, error) {
	opErr := func(err error) error {
		return &podnet.OpError{Op: "list addresses of", Kind: "link", Name: dev, NetNS: ns.String(), Err: err}
	}
	if err := link.ValidateName(dev); err != nil {
		return nil, opErr(err)
	}
	h, l, err := nl.Link(ns, dev)
	if err != nil {
		return nil, opErr(err)
	}
	defer h.Close()
	as, err := nl.Dump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, opErr(err)
	}
	out := make([]netip.Prefix, 0, len(as))
	for _, a := range as {
		out = append(out, nl.Prefix(a.IPNet))
	}
	return out, nil
}

// isNoAddr: the kernel answers EADDRNOTAVAIL when the address is not there.
func isNoAddr(err error) bool { return errors.Is(err, syscall.EADDRNOTAVAIL) }
