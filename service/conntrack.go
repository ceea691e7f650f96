package service

import (
	"context"
	"net/netip"
	"slices"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/netns"
)

// udpPorts returns what conntrack cleanup needs to know of the UDP ports
// of s (nil for none) in the families the proxy serves: the same in both
// modes, since it follows from the model alone.
func (r *renderer) udpPorts(s *Service) []udpPort {
	if s == nil {
		return nil
	}
	var out []udpPort
	for _, f := range r.families {
		fs := r.family(s, f, s.affinitySeconds())
		if fs == nil {
			continue
		}
		for _, p := range s.Ports {
			if p.protocol() == UDP {
				out = append(out, fs.port(p).udp())
			}
		}
	}
	return out
}

// flowFilters returns the UDP flows to delete after a Service's UDP ports
// went from old to new (either may be empty): flows whose replies come
// from an endpoint address and port no longer used (a target port that
// changed on the same pod included, as kube-proxy), and every flow to a port that had no
// endpoints and now has some (its packets were rejected; a stale entry
// would keep them going nowhere — the DNS black hole).
func flowFilters(old, new []udpPort) []conntrack.Filter {
	type key struct {
		f    podnet.Family
		port uint16
	}
	before := map[key]udpPort{}
	for _, u := range old {
		before[key{u.fam, u.port}] = u
	}
	var out []conntrack.Filter
	add := func(u udpPort, ep netip.AddrPort) {
		for _, ip := range u.ips {
			out = append(out, conntrack.Filter{Protocol: conntrack.UDP, OrigDst: ip, DstPort: u.port, ReplySrc: ep.Addr(), ReplySrcPort: ep.Port()})
		}
		if u.nodePort != 0 {
			out = append(out, conntrack.Filter{Protocol: conntrack.UDP, DstPort: u.nodePort, ReplySrc: ep.Addr(), ReplySrcPort: ep.Port()})
		}
	}
	seen := map[key]bool{}
	for _, u := range new {
		k := key{u.fam, u.port}
		seen[k] = true
		ou, had := before[k]
		if len(u.eps) > 0 && (!had || len(ou.eps) == 0) {
			add(u, netip.AddrPort{})
		}
		for _, ep := range ou.eps {
			if !slices.Contains(u.eps, ep) {
				add(ou, ep)
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
