package policy

import (
	"net/netip"
	"slices"
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
