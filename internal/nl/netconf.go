package nl

import (
	"fmt"
	"syscall"

	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/netns"
)

// Attributes of RTM_GETNETCONF (linux/netconf.h); x/sys does not name them.
const (
	netconfaIfindex    = 1
	netconfaForwarding = 2
	netconfaIfindexAll = -1 // the "all" settings: net.ipv4.ip_forward, net.ipv6.conf.all
)

// netconfRequest is a struct netconfmsg (one byte, padded to four) asking
// for family and a NETCONFA_IFINDEX attribute naming ifindex.
func netconfRequest(family, ifindex int) ([]byte, error) {
	ae := mnl.NewAttributeEncoder()
	ae.Int32(netconfaIfindex, int32(ifindex))
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return append([]byte{byte(family), 0, 0, 0}, attrs...), nil
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
	var on bool
	err := withConn(ns, func(c *mnl.Conn) error {
		req, err := netconfRequest(family, netconfaIfindexAll)
		if err != nil {
			return err
		}
		msgs, err := execute(c, unix.RTM_GETNETCONF, 0, req)
		if err != nil {
			return err
		}
		on, err = parseForwarding(msgs)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("forwarding of family %d in netns %q: %w", family, ns, Err(err))
	}
	return on, nil
}

// parseForwarding reads NETCONFA_FORWARDING (a u32) from the
// RTM_NEWNETCONF reply.
func parseForwarding(msgs []mnl.Message) (bool, error) {
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWNETCONF || len(m.Data) < 4 {
			continue
		}
		ad, err := mnl.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return false, err
		}
		for ad.Next() {
			if ad.Type() == netconfaForwarding {
				on := ad.Uint32() != 0
				return on, ad.Err()
			}
		}
		if err := ad.Err(); err != nil {
			return false, err
		}
	}
	return false, fmt.Errorf("no NETCONFA_FORWARDING in the reply")
}
