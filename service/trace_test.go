package service

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
)

// tracer follows a packet through the rules of a iptables.Fake, the way the
// kernel would: it evaluates each rule's matches and targets and splits
// the packet at statistic matches, so a trace returns every outcome with
// its probability.
type tracer struct {
	t      *testing.T
	chains map[string][]iptables.Rule
	local  map[netip.Addr]bool            // the node's addresses (addrtype LOCAL)
	recent map[string]map[netip.Addr]bool // recent lists
}

type pkt struct {
	src, dst netip.Addr
	proto    iptables.Protocol
	dport    uint16
	mark     uint32
	dnat     netip.AddrPort
	verdict  string // "DNAT", "REJECT", "DROP", "ACCEPT" or "" (fell through)
}

type branch struct {
	p    pkt
	prob float64
	done bool
}

func newTracer(t *testing.T, fk *iptables.Fake, table iptables.Table, local ...string) *tracer {
	t.Helper()
	rs, err := iptables.ParseSave(podnet.IPv4, fk.Dump(podnet.IPv4))
	if err != nil {
		t.Fatal(err)
	}
	tr := &tracer{t: t, chains: map[string][]iptables.Rule{}, local: map[netip.Addr]bool{}, recent: map[string]map[netip.Addr]bool{}}
	for _, a := range local {
		tr.local[netip.MustParseAddr(a)] = true
	}
	for _, c := range rs.Table(table).Chains {
		for _, spec := range c.Rules {
			r, err := iptables.ParseRule(podnet.IPv4, spec)
			if err != nil {
				t.Fatalf("parse %q: %v", spec, err)
			}
			tr.chains[c.Name] = append(tr.chains[c.Name], r)
		}
	}
	return tr
}

// outcomes traces p from a built-in chain and sums the probability of each
// final packet state (dnat destination, verdict, masquerade mark).
func (tr *tracer) outcomes(chain string, p pkt) map[pkt]float64 {
	out := map[pkt]float64{}
	for _, b := range tr.run(chain, branch{p: p, prob: 1}) {
		out[b.p] += b.prob
	}
	return out
}

func (tr *tracer) run(chain string, b branch) []branch {
	return tr.from(tr.chains[chain], 0, b)
}

func (tr *tracer) from(rules []iptables.Rule, i int, b branch) []branch {
	for ; i < len(rules); i++ {
		m := tr.match(rules[i], b.p)
		if m == 0 {
			continue
		}
		if m < 1 {
			hit := tr.apply(rules, i, branch{b.p, b.prob * m, false})
			return append(hit, tr.from(rules, i+1, branch{b.p, b.prob * (1 - m), false})...)
		}
		return tr.apply(rules, i, b)
	}
	return []branch{b}
}

func (tr *tracer) apply(rules []iptables.Rule, i int, b branch) []branch {
	switch tg := rules[i].Target.(type) {
	case nil:
		return tr.from(rules, i+1, b)
	case iptables.Jump:
		var out []branch
		for _, s := range tr.run(string(tg), b) {
			if s.done {
				out = append(out, s)
			} else {
				out = append(out, tr.from(rules, i+1, s)...)
			}
		}
		return out
	case iptables.DNAT:
		b.p.dnat = netip.AddrPortFrom(tg.To, tg.Ports.First)
		b.p.verdict, b.done = "DNAT", true
		return []branch{b}
	case iptables.SetMark:
		b.p.mark = (b.p.mark &^ tg.Mask) ^ tg.Value
		return tr.from(rules, i+1, b)
	case iptables.Reject:
		b.p.verdict, b.done = "REJECT", true
		return []branch{b}
	case iptables.Masquerade:
		b.p.verdict, b.done = "MASQUERADE", true
		return []branch{b}
	}
	switch rules[i].Target {
	case iptables.Return:
		return []branch{b}
	case iptables.Drop:
		b.p.verdict, b.done = "DROP", true
	case iptables.Accept:
		b.p.verdict, b.done = "ACCEPT", true
	default:
		tr.t.Fatalf("tracer: target %T", rules[i].Target)
	}
	return []branch{b}
}

// match returns the probability that r matches p: 0, 1, or a statistic
// match's probability.
func (tr *tracer) match(r iptables.Rule, p pkt) float64 {
	addr := func(a iptables.Addr, x netip.Addr) bool {
		return !a.Prefix.IsValid() || a.Prefix.Contains(x) != a.Not
	}
	if !addr(r.Source, p.src) || !addr(r.Destination, p.dst) || r.Protocol != "" && r.Protocol != p.proto {
		return 0
	}
	prob := 1.0
	for _, m := range r.Matches {
		switch m := m.(type) {
		case iptables.Comment:
		case iptables.Conntrack: // every traced packet is NEW
			if slices.Contains(m.States, "NEW") == m.Not {
				return 0
			}
		case iptables.Ports:
			if !m.Dst.IsZero() && (m.Dst.First != p.dport) != m.NotDst {
				return 0
			}
		case iptables.AddrType:
			if m.Src == "LOCAL" && !tr.local[p.src] || m.Dst == "LOCAL" && !tr.local[p.dst] {
				return 0
			}
		case iptables.Mark:
			mask := m.Mask
			if mask == 0 {
				mask = ^uint32(0)
			}
			if (p.mark&mask == m.Value) == m.Not {
				return 0
			}
		case iptables.Statistic:
			prob *= m.Probability
		case iptables.Recent:
			switch m.Mode {
			case iptables.RecentCheck:
				if !tr.recent[m.Name][p.src] {
					return 0
				}
			case iptables.RecentSet: // matches; recording is up to the test
			}
		default:
			tr.t.Fatalf("tracer: match %T", m)
		}
	}
	return prob
}
