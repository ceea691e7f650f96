package podnet

import (
	"net/netip"
	"strconv"
)

// Family is an IP family. Packages that act per family (iptables tables,
// forwarding sysctls, conntrack filters) take this one type; each
// re-exports it under its own name (iptables.Family is podnet.Family).
type Family uint8

// The two families. The zero Family is invalid.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// FamilyOf returns the family of a (IPv4 for an IPv4-mapped IPv6 address).
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Valid reports whether f is IPv4 or IPv6.
func (f Family) Valid() bool { return f == IPv4 || f == IPv6 }

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return "Family(" + strconv.Itoa(int(f)) + ")"
}
