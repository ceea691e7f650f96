package nl

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	vnl "github.com/vishvananda/netlink/nl"

	"github.com/podnet/podnet/netns"
)

// LinkAddr is one address of a link.
type LinkAddr struct {
	// Prefix is the address with its prefix length, as netlink.Addr.IPNet
	// has it; for a point-to-point address (ip addr add L peer P/N) it is
	// L/32 or L/128, the prefix length belonging to the peer.
	Prefix netip.Prefix
	// Peer is P/N for a point-to-point address, else the zero Prefix.
	Peer netip.Prefix
}

// AddrsOf returns the addresses of the link with index ifindex in ns, in
// the kernel's order (IPv4 first). family is netlink.FAMILY_V4,
// netlink.FAMILY_V6 or netlink.FAMILY_ALL (unix.AF_INET, AF_INET6,
// AF_UNSPEC). A missing link gives an error matching podnet.ErrNotFound.
//
// Unlike netlink.Handle.AddrList, which dumps the addresses of every link of
// the namespace and keeps those of one, it asks the kernel to dump only
// this link (a strict-checked dump, Linux 4.20 and later), so its cost does
// not grow with the number of links, which on a node is the number of pods.
// On older kernels it falls back to the full dump. When the calling thread
// is already in ns, no thread changes namespace.
//
// Equivalent to: ip addr show dev IFINDEX
func AddrsOf(ns *netns.NS, ifindex, family int) ([]LinkAddr, error) {
	return addrsOf(ns, ifindex, family, true)
}

// addrsOf is AddrsOf; strict=false forces the fallback of old kernels.
func addrsOf(ns *netns.NS, ifindex, family int, strict bool) ([]LinkAddr, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("list addresses of ifindex %d: %w", ifindex, syscall.ENODEV)
	}
	switch family {
	case unix.AF_UNSPEC, unix.AF_INET, unix.AF_INET6:
	default:
		return nil, fmt.Errorf("list addresses of ifindex %d: address family %d: %w", ifindex, family, syscall.EAFNOSUPPORT)
	}
	var addrs []LinkAddr
	err := withConn(ns, func(c conn) error {
		strict := strict
		if strict {
			// Without strict checking the kernel ignores ifa_index and
			// walks every device; old kernels do not know the option.
			err := unix.SetsockoptInt(c.fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1)
			if err != nil && !errors.Is(err, unix.ENOPROTOOPT) {
				return fmt.Errorf("set strict checking: %w", err)
			}
			strict = err == nil
		}
		var err error
		addrs, err = Dump(func() ([]LinkAddr, error) { return c.dumpAddrs(ifindex, family) })
		if err == nil && len(addrs) == 0 && !strict {
			// The full dump cannot tell a link without addresses from none.
			err = c.getLink(ifindex)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list addresses of ifindex %d: %w", ifindex, Err(err))
	}
	return addrs, nil
}

// dumpAddrs dumps the addresses of ifindex; with strict checking the
// kernel walks only that link, without it every link, and the messages of
// other links are dropped here.
func (c conn) dumpAddrs(ifindex, family int) ([]LinkAddr, error) {
	msg := vnl.NewIfAddrmsg(family)
	msg.Index = uint32(ifindex)
	var out []LinkAddr
	err := c.request(unix.RTM_GETADDR, unix.NLM_F_DUMP, func(m syscall.NetlinkMessage) error {
		if m.Header.Type != unix.RTM_NEWADDR {
			return nil
		}
		a, ok, err := parseAddr(m.Data, ifindex, family)
		if ok {
			out = append(out, a)
		}
		return err
	}, msg)
	return out, err
}

// getLink asks for the link ifindex; a missing one gives ENODEV.
func (c conn) getLink(ifindex int) error {
	msg := vnl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	return c.request(unix.RTM_GETLINK, 0, func(syscall.NetlinkMessage) error { return nil }, msg)
}

// parseAddr decodes an RTM_NEWADDR message; ok is false for an address of
// another link or family. The address is taken as netlink.Handle.AddrList
// takes it: IFA_LOCAL is the local address and IFA_ADDRESS, when it
// differs, the peer's; IPv6 sends IFA_ADDRESS alone unless there is a peer.
func parseAddr(b []byte, ifindex, family int) (LinkAddr, bool, error) {
	if len(b) < unix.SizeofIfAddrmsg {
		return LinkAddr{}, false, fmt.Errorf("short RTM_NEWADDR message (%d bytes)", len(b))
	}
	msg := vnl.DeserializeIfAddrmsg(b)
	if int(msg.Index) != ifindex || (family != unix.AF_UNSPEC && int(msg.Family) != family) {
		return LinkAddr{}, false, nil
	}
	attrs, err := vnl.ParseRouteAttr(b[msg.Len():])
	if err != nil {
		return LinkAddr{}, false, err
	}
	var local, address netip.Addr
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFA_LOCAL:
			local, _ = netip.AddrFromSlice(a.Value)
		case unix.IFA_ADDRESS:
			address, _ = netip.AddrFromSlice(a.Value)
		}
	}
	bits := int(msg.Prefixlen)
	var la LinkAddr
	switch {
	case !local.IsValid():
		la.Prefix = netip.PrefixFrom(address, bits)
	case msg.Family == unix.AF_INET && local == address:
		la.Prefix = netip.PrefixFrom(local, bits)
	default:
		la.Prefix = netip.PrefixFrom(local, local.BitLen())
		if address.IsValid() {
			la.Peer = netip.PrefixFrom(address, bits)
		}
	}
	if !la.Prefix.IsValid() {
		return LinkAddr{}, false, fmt.Errorf("RTM_NEWADDR message without a valid address (family %d, prefix length %d)", msg.Family, bits)
	}
	return la, true, nil
}
