package policy

import (
	"net/netip"
	"slices"
	"strings"
)

// addrRange is the addresses from first to last, both included.
type addrRange struct{ first, last netip.Addr }

// prefixRange returns the addresses of p.
func prefixRange(p netip.Prefix) addrRange {
	first := p.Masked().Addr()
	b := first.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b)
	return addrRange{first, last}
}

// blockRanges returns the addresses of b: its CIDR without its excepts.
func blockRanges(b *IPBlock) []addrRange {
	out := []addrRange{prefixRange(b.CIDR)}
	for _, e := range b.Except {
		cut := prefixRange(e)
		var next []addrRange
		for _, r := range out {
			next = append(next, subtract(r, cut)...)
		}
		out = next
	}
	return out
}

// subtract returns r without the addresses of cut.
func subtract(r, cut addrRange) []addrRange {
	if cut.last.Less(r.first) || r.last.Less(cut.first) {
		return []addrRange{r}
	}
	var out []addrRange
	if r.first.Less(cut.first) {
		out = append(out, addrRange{r.first, cut.first.Prev()})
	}
	if cut.last.Less(r.last) {
		out = append(out, addrRange{cut.last.Next(), r.last})
	}
	return out
}

// normalize sorts rs and merges ranges that overlap or touch, so that the
// result can be the elements of an interval set (which the kernel
// refuses to hold overlapping).
func normalize(rs []addrRange) []addrRange {
	slices.SortFunc(rs, func(a, b addrRange) int { return a.first.Compare(b.first) })
	var out []addrRange
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if next := last.last.Next(); !next.IsValid() || !next.Less(r.first) {
				if last.last.Less(r.last) {
					last.last = r.last
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

// portRange is the ports of one protocol from first to last, both
// included.
type portRange struct {
	proto       Protocol
	first, last uint16
}

// portRanges returns the numeric ports ps name (a port, a range to
// EndPort, or every port when Port is 0) merged per protocol where they
// overlap or touch, sorted, so that they can be the elements of an
// interval set: the kernel refuses overlapping elements, and two
// elements starting at the same port would replace each other.
func portRanges(ps []Port) []portRange {
	rs := make([]portRange, 0, len(ps))
	for _, p := range ps {
		r := portRange{proto: p.Protocol.orTCP(), first: p.Port, last: p.EndPort}
		if r.first == 0 {
			r.last = 65535
		} else if r.last == 0 {
			r.last = r.first
		}
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b portRange) int {
		if a.proto != b.proto {
			return strings.Compare(string(a.proto), string(b.proto))
		}
		return int(a.first) - int(b.first)
	})
	var out []portRange
	for _, r := range rs {
		if n := len(out); n > 0 && out[n-1].proto == r.proto && int(out[n-1].last)+1 >= int(r.first) {
			out[n-1].last = max(out[n-1].last, r.last)
			continue
		}
		out = append(out, r)
	}
	return out
}
