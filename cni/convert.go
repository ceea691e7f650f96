package cni

import (
	"net"
	"net/netip"
)

// Prefix converts an address of a CNI result; an IPv4-mapped address
// becomes IPv4 and the host bits are kept (10.200.0.4/24 stays that).
func Prefix(n net.IPNet) netip.Prefix {
	a := Addr(n.IP)
	if !a.IsValid() {
		return netip.Prefix{}
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}
	}
	if a.Is4() && bits == 128 {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones)
}

// Addr converts an IP of a CNI result; nil gives the zero Addr and an
// IPv4-mapped address becomes IPv4.
func Addr(ip net.IP) netip.Addr {
	if ip == nil {
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// IPNet converts p to the type CNI results use.
func IPNet(p netip.Prefix) net.IPNet {
	if !p.IsValid() {
		return net.IPNet{}
	}
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// IP converts a to the type CNI results use; the zero Addr gives nil.
func IP(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return a.AsSlice()
}
