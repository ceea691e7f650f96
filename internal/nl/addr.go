package nl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

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
	err := withConn(ns, func(c *mnl.Conn) error {
		strict := strict
		if strict {
			// Without strict checking the kernel ignores ifa_index and
			// walks every device; old kernels do not know the option.
			// (Config.Strict would fail the dial there instead.)
			err := c.SetOption(mnl.GetStrictCheck, true)
			if err != nil && !errors.Is(err, unix.ENOPROTOOPT) {
				return fmt.Errorf("set strict checking: %w", err)
			}
			strict = err == nil
		}
		var err error
		addrs, err = Dump(func() ([]LinkAddr, error) { return dumpAddrs(c, ifindex, family) })
		if err == nil && len(addrs) == 0 && !strict {
			// The full dump cannot tell a link without addresses from none.
			_, err = execute(c, unix.RTM_GETLINK, 0, ifInfomsg(ifindex))
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
func dumpAddrs(c *mnl.Conn, ifindex, family int) ([]LinkAddr, error) {
	msgs, err := execute(c, unix.RTM_GETADDR, mnl.Dump, ifAddrmsg(family, ifindex))
	if err != nil {
		return nil, err
	}
	var out []LinkAddr
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWADDR {
			continue
		}
		a, ok, err := parseAddr(m.Data, ifindex, family)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// parseAddr decodes an RTM_NEWADDR message; ok is false for an address of
// another link or family. The address is taken as netlink.Handle.AddrList
// takes it: IFA_LOCAL is the local address and IFA_ADDRESS, when it
// differs, the peer's; IPv6 sends IFA_ADDRESS alone unless there is a peer.
func parseAddr(b []byte, ifindex, family int) (LinkAddr, bool, error) {
	if len(b) < unix.SizeofIfAddrmsg {
		return LinkAddr{}, false, fmt.Errorf("short RTM_NEWADDR message (%d bytes)", len(b))
	}
	// struct ifaddrmsg: family, prefix length, flags, scope (u8), index (u32).
	msgFamily, bits, index := int(b[0]), int(b[1]), int(binary.NativeEndian.Uint32(b[4:]))
	if index != ifindex || (family != unix.AF_UNSPEC && msgFamily != family) {
		return LinkAddr{}, false, nil
	}
	ad, err := mnl.NewAttributeDecoder(b[unix.SizeofIfAddrmsg:])
	if err != nil {
		return LinkAddr{}, false, err
	}
	var local, address netip.Addr
	for ad.Next() {
		switch ad.Type() {
		case unix.IFA_LOCAL:
			local, _ = netip.AddrFromSlice(ad.Bytes())
		case unix.IFA_ADDRESS:
			address, _ = netip.AddrFromSlice(ad.Bytes())
		}
	}
	if err := ad.Err(); err != nil {
		return LinkAddr{}, false, err
	}
	var la LinkAddr
	switch {
	case !local.IsValid():
		la.Prefix = netip.PrefixFrom(address, bits)
	case msgFamily == unix.AF_INET && local == address:
		la.Prefix = netip.PrefixFrom(local, bits)
	default:
		la.Prefix = netip.PrefixFrom(local, local.BitLen())
		if address.IsValid() {
			la.Peer = netip.PrefixFrom(address, bits)
		}
	}
	if !la.Prefix.IsValid() {
		return LinkAddr{}, false, fmt.Errorf("RTM_NEWADDR message without a valid address (family %d, prefix length %d)", msgFamily, bits)
	}
	return la, true, nil
}
