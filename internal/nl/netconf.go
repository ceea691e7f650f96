package nl

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	vnl "github.com/vishvananda/netlink/nl"

	"github.com/podnet/podnet/netns"
)

// Attributes of RTM_GETNETCONF (linux/netconf.h); x/sys does not name them.
const (
	netconfaIfindex    = 1
	netconfaForwarding = 2
	netconfaIfindexAll = -1 // the "all" settings: net.ipv4.ip_forward, net.ipv6.conf.all
)

// netconfRequest is a struct netconfmsg (one byte, padded to four) and a
// NETCONFA_IFINDEX attribute.
type netconfRequest struct {
	family  uint8
	ifindex int32
}

func (r netconfRequest) Len() int { return 4 + unix.SizeofRtAttr + 4 }

func (r netconfRequest) Serialize() []byte {
	b := make([]byte, r.Len())
	b[0] = r.family
	ne := vnl.NativeEndian()
	ne.PutUint16(b[4:], uint16(unix.SizeofRtAttr+4))
	ne.PutUint16(b[6:], netconfaIfindex)
	ne.PutUint32(b[8:], uint32(r.ifindex))
	return b
}

// Forwarding reports whether forwarding of family (unix.AF_INET or
// unix.AF_INET6) is on for all interfaces of ns: net.ipv4.ip_forward or
// net.ipv6.conf.all.forwarding. It asks over netlink: a read under
// /proc/sys/net costs a path lookup that grows with the network
// namespaces on the machine that have used /proc/sys, one per pod where
// the runtime sets sysctls.
//
// Equivalent to: ip -4 netconf show dev all (or -6)
func Forwarding(ns *netns.NS, family int) (bool, error) {
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return false, fmt.Errorf("forwarding: address family %d: %w", family, syscall.EAFNOSUPPORT)
	}
	on, found := false, false
	err := withConn(ns, func(c conn) error {
		return c.request(unix.RTM_GETNETCONF, 0, func(m syscall.NetlinkMessage) error {
			if m.Header.Type != unix.RTM_NEWNETCONF || len(m.Data) < 4 {
				return nil
			}
			attrs, err := vnl.ParseRouteAttr(m.Data[4:])
			if err != nil {
				return err
			}
			if v := attr(attrs, netconfaForwarding); len(v) >= 4 {
				on, found = vnl.NativeEndian().Uint32(v) != 0, true
			}
			return nil
		}, netconfRequest{uint8(family), netconfaIfindexAll})
	})
	if err == nil && !found {
		err = fmt.Errorf("no NETCONFA_FORWARDING in the reply")
	}
	if err != nil {
		return false, fmt.Errorf("forwarding of family %d in netns %q: %w", family, ns, Err(err))
	}
	return on, nil
}
