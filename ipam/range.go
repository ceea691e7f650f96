package ipam

import (
	"fmt"
	"net/netip"
	"strings"
)

// Range is a contiguous block of addresses inside one subnet, as a
// host-local "ranges" entry describes it. Zero fields take host-local's
// defaults when the range is canonicalized:
//
//   - RangeStart: the first address after the network address (.1)
//   - RangeEnd: the last address of the subnet; for IPv4 the one before the
//     broadcast address (.254 in a /24)
//   - Gateway: the first address after the network address (.1)
//
// The network address, the IPv4 broadcast address and the gateway are never
// allocated, even when RangeStart or RangeEnd include them.
type Range struct {
	Subnet     netip.Prefix // required; host bits must be zero; at most /30 (IPv4) or /126 (IPv6)
	RangeStart netip.Addr   // first allocatable address, inclusive
	RangeEnd   netip.Addr   // last allocatable address, inclusive
	Gateway    netip.Addr   // returned with every lease; never allocated
}

// Canonical returns r with its defaults filled in, or a *FieldError
// (matching ErrInvalid) naming the field that is wrong. Field names in errors
// are relative to the range ("subnet", "rangeStart" …).
func (r Range) Canonical() (Range, error) { return r.canonical("") }

func (r Range) canonical(path string) (Range, error) {
	f := func(name string) string { return path + name }
	if !r.Subnet.IsValid() {
		return r, fieldErr(f("subnet"), "", "missing")
	}
	if r.Subnet.Addr().Zone() != "" || r.Subnet.Addr().Is4In6() {
		return r, fieldErr(f("subnet"), r.Subnet.String(), "zone or IPv4-mapped address not allowed")
	}
	if r.Subnet.Bits() > r.Subnet.Addr().BitLen()-2 {
		return r, fieldErr(f("subnet"), r.Subnet.String(), "too small to allocate from")
	}
	if m := r.Subnet.Masked(); m != r.Subnet {
		return r, fieldErr(f("subnet"), r.Subnet.String(), "host bits set; the network address is %s", m.Addr())
	}
	network := r.Subnet.Addr()
	check := func(name string, a *netip.Addr, def netip.Addr) error {
		if !a.IsValid() {
			*a = def
			return nil
		}
		*a = a.Unmap()
		if a.Zone() != "" || !r.Subnet.Contains(*a) {
			return fieldErr(f(name), a.String(), "not in subnet %s", r.Subnet)
		}
		return nil
	}
	if err := check("gateway", &r.Gateway, network.Next()); err != nil {
		return r, err
	}
	if err := check("rangeStart", &r.RangeStart, network.Next()); err != nil {
		return r, err
	}
	if err := check("rangeEnd", &r.RangeEnd, lastHost(r.Subnet)); err != nil {
		return r, err
	}
	if r.RangeStart.Compare(r.RangeEnd) > 0 {
		return r, fieldErr(f("rangeStart"), r.RangeStart.String(), "after rangeEnd %s", r.RangeEnd)
	}
	return r, nil
}

// Contains reports whether a lies between RangeStart and RangeEnd (of a
// canonical range), whether or not it may be allocated.
func (r Range) Contains(a netip.Addr) bool {
	a = a.Unmap()
	return r.Subnet.Contains(a) && a.Compare(r.RangeStart) >= 0 && a.Compare(r.RangeEnd) <= 0
}

// Allocatable reports whether a may be leased from r: inside the range and
// neither the network address, the IPv4 broadcast address nor the gateway.
func (r Range) Allocatable(a netip.Addr) bool {
	a = a.Unmap()
	return r.Contains(a) && a != r.Subnet.Addr() && a != r.Gateway &&
		!(a.Is4() && a == lastAddr(r.Subnet))
}

// Overlaps reports whether two canonical ranges of the same family share an
// address.
func (r Range) Overlaps(o Range) bool {
	if r.Subnet.Addr().Is4() != o.Subnet.Addr().Is4() {
		return false
	}
	return r.Contains(o.RangeStart) || r.Contains(o.RangeEnd) ||
		o.Contains(r.RangeStart) || o.Contains(r.RangeEnd)
}

// String returns "start-end" like host-local's error messages.
func (r Range) String() string { return r.RangeStart.String() + "-" + r.RangeEnd.String() }

// RangeSet is a list of ranges of one address family; an allocation takes
// one address from the first range (in round-robin order) that has a free one.
// A dual-stack attachment uses one IPv4 set and one IPv6 set.
type RangeSet []Range

// Canonical returns the set with every range canonicalized, or a *FieldError
// for an empty set, a bad range, mixed families or overlapping ranges.
func (s RangeSet) Canonical() (RangeSet, error) { return s.canonical("") }

func (s RangeSet) canonical(path string) (RangeSet, error) {
	if len(s) == 0 {
		return nil, fieldErr(strings.TrimSuffix(path, "."), "", "empty range set")
	}
	out := make(RangeSet, len(s))
	for i, r := range s {
		c, err := r.canonical(fmt.Sprintf("%s[%d].", strings.TrimSuffix(path, "."), i))
		if err != nil {
			return nil, err
		}
		if c.Is4() != out[0].Is4() && i > 0 {
			return nil, fieldErr(fmt.Sprintf("%s[%d].subnet", strings.TrimSuffix(path, "."), i), c.Subnet.String(), "mixed address families in one range set")
		}
		out[i] = c
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[i].Overlaps(out[j]) {
				return nil, fieldErr(fmt.Sprintf("%s[%d]", strings.TrimSuffix(path, "."), j), out[j].String(), "overlaps %s", out[i])
			}
		}
	}
	return out, nil
}

// Is4 reports whether the range is an IPv4 range.
func (r Range) Is4() bool { return r.Subnet.Addr().Is4() }

// Contains reports whether any range of the set contains a.
func (s RangeSet) Contains(a netip.Addr) bool {
	_, ok := s.RangeFor(a)
	return ok
}

// RangeFor returns the range of the set that contains a.
func (s RangeSet) RangeFor(a netip.Addr) (Range, bool) {
	for _, r := range s {
		if r.Contains(a) {
			return r, true
		}
	}
	return Range{}, false
}

// Overlaps reports whether any range of s overlaps any range of o.
func (s RangeSet) Overlaps(o RangeSet) bool {
	for _, r := range s {
		for _, r1 := range o {
			if r.Overlaps(r1) {
				return true
			}
		}
	}
	return false
}

// String joins the ranges with commas, as host-local prints a set.
func (s RangeSet) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := range b {
		hostBits := len(b)*8 - p.Bits() - (len(b)-1-i)*8
		switch {
		case hostBits >= 8:
			b[i] = 0xff
		case hostBits > 0:
			b[i] |= byte(1<<hostBits - 1)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// lastHost is host-local's default rangeEnd: the last address, minus the
// broadcast address for IPv4.
func lastHost(p netip.Prefix) netip.Addr {
	if p.Addr().Is4() {
		return lastAddr(p).Prev()
	}
	return lastAddr(p)
}
