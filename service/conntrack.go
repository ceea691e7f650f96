package service

import (
	"context"
	"net/netip"
	"slices"

	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

// flowFilters returns the UDP flows to delete after a Service's rules
// went from old to new (either may be nil): flows whose replies come from
// an endpoint no longer used, and every flow to a port that had no
// endpoints and now has some (its packets were rejected; a stale entry
// would keep them going nowhere — the DNS black hole).
func flowFilters(old, new *rendering) []conntrack.Filter {
	type key struct {
		f    iptables.Family
		port uint16
	}
	var before map[key]udpPort
	if old != nil {
		before = map[key]udpPort{}
		for _, u := range old.udp {
			before[key{u.fam, u.port}] = u
		}
	}
	var out []conntrack.Filter
	add := func(u udpPort, ep netip.Addr) {
		for _, ip := range u.ips {
			out = append(out, conntrack.Filter{Protocol: conntrack.UDP, OrigDst: ip, DstPort: u.port, ReplySrc: ep})
		}
		if u.nodePort != 0 {
			out = append(out, conntrack.Filter{Protocol: conntrack.UDP, DstPort: u.nodePort, ReplySrc: ep})
		}
	}
	seen := map[key]bool{}
	if new != nil {
		for _, u := range new.udp {
			k := key{u.fam, u.port}
			seen[k] = true
			ou, had := before[k]
			if len(u.eps) > 0 && (!had || len(ou.eps) == 0) {
				add(u, netip.Addr{})
			}
			for _, ep := range ou.eps {
				if !slices.Contains(u.eps, ep) {
					add(ou, ep)
				}
			}
		}
	}
	for k, ou := range before {
		if !seen[k] {
			for _, ep := range ou.eps {
				add(ou, ep)
			}
		}
	}
	return out
}

// deleteFlows deletes the UDP conntrack flows that any filter selects,
// reading the table once.
//
// Equivalent to: conntrack -D -p udp --orig-dst IP --dport PORT [--reply-src EP]
func deleteFlows(ctx context.Context, ns *netns.NS, filters []conntrack.Filter) (int, error) {
	return conntrack.Delete(ctx, ns, conntrack.Any(filters...))
}
