package conntrack

import (
	"net/netip"
	"slices"

	"github.com/podnet/podnet"
)

// Filter selects flows by the fields conntrack -L and -D take; zero fields
// match anything. Its Match method is the predicate List and Delete take.
type Filter struct {
	Family   podnet.Family // IPv4 or IPv6; 0 both
	Protocol Protocol      // 0 any
	OrigSrc  netip.Addr    // -s
	OrigDst  netip.Addr    // -d
	ReplySrc netip.Addr    // -r: after DNAT, the backend that answers
	ReplyDst netip.Addr    // -q: after SNAT, the address replies go to
	DstPort  uint16        // --dport: original destination port
	// ReplySrcPort is the reply source port: the backend port after DNAT.
	ReplySrcPort uint16
}

// Match reports whether f selects fl.
func (f Filter) Match(fl Flow) bool {
	addr := func(want, have netip.Addr) bool { return !want.IsValid() || want.Unmap() == have }
	switch {
	case f.Family != 0 && podnet.FamilyOf(fl.Orig.Src) != f.Family:
		return false
	case f.Protocol != 0 && f.Protocol != fl.Protocol:
		return false
	case f.DstPort != 0 && fl.Orig.DstPort != f.DstPort:
		return false
	case f.ReplySrcPort != 0 && fl.Reply.SrcPort != f.ReplySrcPort:
		return false
	}
	return addr(f.OrigSrc, fl.Orig.Src) && addr(f.OrigDst, fl.Orig.Dst) && addr(f.ReplySrc, fl.Reply.Src) && addr(f.ReplyDst, fl.Reply.Dst)
}

// Any returns a predicate that selects a flow when one of filters does;
// with no filters it selects nothing.
func Any(filters ...Filter) func(Flow) bool {
	filters = slices.Clone(filters)
	return func(fl Flow) bool {
		return slices.ContainsFunc(filters, func(f Filter) bool { return f.Match(fl) })
	}
}
