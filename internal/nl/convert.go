package nl

import (
	"net"
	"net/netip"
)

// IPNet converts p to the type netlink wants. The address keeps its host
// bits (10.200.0.1/24 stays that, as an interface address must).
func IPNet(p netip.Prefix) *net.IPNet {
	if !p.IsValid() {
		return nil
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Prefix converts n from netlink; an IPv4-mapped address becomes IPv4. A
// nil n, or one whose mask is missing or not a run of ones, gives the zero
// Prefix.
func Prefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a := Addr(n.IP)
	ones, bits := n.Mask.Size()
	if bits == 0 || !a.IsValid() {
		return netip.Prefix{}
	}
	if a.Is4() && bits == 128 {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones)
}

// Addr converts ip from netlink; nil gives the zero Addr.
func Addr(ip net.IP) netip.Addr {
	if ip == nil {
		return netip.Addr{}
	}
	if v4 := ip.To4(); v4 != nil {
		return netip.AddrFrom4([4]byte(v4))
	}
	a, _ := netip.AddrFromSlice(ip)
	return a
}

// IP converts a to net.IP; the zero Addr gives nil.
func IP(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return a.AsSlice()
}
