package cni

import (
	"net"
	"net/netip"

	"github.com/podnet/podnet/internal/nl"
)

// Prefix converts an address of a CNI result; an IPv4-mapped address
// becomes IPv4 and the host bits are kept (10.200.0.4/24 stays that).
func Prefix(n net.IPNet) netip.Prefix { return nl.Prefix(&n) }

// Addr converts an IP of a CNI result; nil gives the zero Addr and an
// IPv4-mapped address becomes IPv4.
func Addr(ip net.IP) netip.Addr { return nl.Addr(ip) }

// IPNet converts p to the type CNI results use; the zero Prefix gives the
// zero IPNet.
func IPNet(p netip.Prefix) net.IPNet {
	if n := nl.IPNet(p); n != nil {
		return *n
	}
	return net.IPNet{}
}

// IP converts a to the type CNI results use; the zero Addr gives nil.
func IP(a netip.Addr) net.IP { return nl.IP(a) }
