package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables/expr"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/nft"
)

// This file turns the model into the table as it should be (a ruleset);
// nftables_sync.go writes a ruleset, or the difference between two.

// ruleset is the enforcer's table: its sets with their elements and its
// chains with their rules.
type ruleset struct {
	sets   map[string]*setSpec
	chains map[string]*chainSpec
}

type setSpec struct {
	kind  setKind
	fam   podnet.Family // of the addresses in its key; none for kindPorts
	elems map[string]string
}

type chainSpec struct {
	base  bool
	prio  int32 // base chains: priority in the forward hook
	rules []ruleSpec
}

// ruleSpec is one rule: text says it in nft's syntax (and tells two
// rules apart), exprs is what goes to the kernel.
type ruleSpec struct {
	text    string
	exprs   []expr.Any
	comment string
}

func (c *chainSpec) sameRules(o *chainSpec) bool {
	return slices.EqualFunc(c.rules, o.rules, func(a, b ruleSpec) bool { return a.text == b.text && a.comment == b.comment })
}

func newRuleset() *ruleset {
	return &ruleset{sets: map[string]*setSpec{}, chains: map[string]*chainSpec{}}
}

// compiler builds one compilation.
type compiler struct {
	m    *model
	fams []podnet.Family
	out  *ruleset
}

// compile returns the table the model asks for. The chain and sets of
// each policy that isolates a local pod come from the model's fragments
// where the changes since the last compilation left them valid; the
// rest — base chains, the verdict maps, the chains of sets of policies —
// is built anew, at a cost that grows with the local pods only. An
// unchanged fragment's sets and chains are the very objects of the last
// compilation, which diffOf then skips.
func compile(m *model, fams []podnet.Family) *ruleset {
	m.invalidate()
	c := &compiler{m: m, fams: fams, out: newRuleset()}
	c.baseChains()
	local := slices.SortedFunc(maps.Keys(m.local), Name.compare)
	active := map[fragKey]bool{}
	for i, d := range []Direction{Egress, Ingress} {
		for _, n := range local {
			p := m.local[n]
			iso := m.isolation[n]
			if iso == nil {
				iso = &[2][]Name{c.policiesOf(p, Egress), c.policiesOf(p, Ingress)}
				m.isolation[n] = iso
			}
			set := iso[i]
			for _, pn := range set {
				if k := (fragKey{pn, d}); !active[k] {
					active[k] = true
					c.add(c.fragment(k))
				}
			}
			if len(set) > 0 {
				c.isolate(p, d, set)
			}
		}
	}
	return c.out
}

// fragment returns the chain and sets of policy k.n in direction k.d,
// compiled now unless the model holds them.
func (c *compiler) fragment(k fragKey) *ruleset {
	if f := c.m.frags[k]; f != nil {
		return f
	}
	f := newRuleset()
	c.policy(f, c.m.policies[k.n], k.d)
	c.m.frags[k] = f
	return f
}

// add puts a fragment's sets and chains into the output.
func (c *compiler) add(f *ruleset) {
	maps.Copy(c.out.sets, f.sets)
	maps.Copy(c.out.chains, f.chains)
}

// policiesOf returns the policies that isolate local pod p in d, by name.
func (c *compiler) policiesOf(p *Pod, d Direction) []Name {
	var out []Name
	for n, pol := range c.m.polsByNS[p.Namespace] {
		if pol.Types&d != 0 && pol.PodSelector.Matches(p.Labels) {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, Name.compare)
	return out
}

func (rs *ruleset) set(name string, k setKind, f podnet.Family) *setSpec {
	s := rs.sets[name]
	if s == nil {
		s = &setSpec{kind: k, fam: f, elems: map[string]string{}}
		rs.sets[name] = s
	}
	return s
}

// baseChains adds the hooked chains and the sets they read.
func (c *compiler) baseChains() {
	for _, d := range []Direction{Egress, Ingress} {
		ch := &chainSpec{base: true, prio: priorityIngress}
		dir, src := "daddr", false
		if d == Egress {
			ch.prio, dir, src = priorityEgress, "saddr", true
		}
		ch.rules = append(ch.rules, ruleSpec{text: "ct state established,related accept", exprs: append(ctEstablished(), accept())})
		if slices.Contains(c.fams, podnet.IPv6) {
			// Neighbour discovery between two pods of one bridge passes
			// the hook (conntrack does not track it): an isolated pod
			// must still answer it.
			ch.rules = append(ch.rules, ruleSpec{text: "meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type nd-router-solicit-nd-redirect accept",
				exprs: slices.Concat(nfproto(podnet.IPv6), neighbourDiscovery(), []expr.Any{accept()})})
		}
		for _, f := range c.fams {
			pair := "hairpin-" + famName(f)
			c.out.set(pair, kindPair, f)
			exprs := slices.Concat(nfproto(f), []expr.Any{nft.SAddr(f, reg0), nft.DAddr(f, reg0+addrLen(f)/4), lookup(pair, reg0), accept()})
			ch.rules = append(ch.rules, ruleSpec{text: fmt.Sprintf("%s saddr . %s daddr @%s accept", famName(f), famName(f), pair), exprs: exprs})
		}
		for _, f := range c.fams {
			vm := vmapName(d, f)
			c.out.set(vm, kindVmap, f)
			l := lookup(vm, 1)
			l.IsDestRegSet, l.DestRegister = true, 0
			ch.rules = append(ch.rules, ruleSpec{text: fmt.Sprintf("meta nfproto %s %s %s vmap @%s", famName(f), famName(f), dir, vm),
				exprs: slices.Concat(nfproto(f), []expr.Any{addrLoad(f, src, 1), l})})
		}
		c.out.chains[baseChain(d)] = ch
	}
}

func baseChain(d Direction) string {
	if d == Ingress {
		return "ingress"
	}
	return "egress"
}

// isolate leads local pod p's traffic in d to the chain of its set of
// policies, and lets it reach itself.
func (c *compiler) isolate(p *Pod, d Direction, policies []Name) {
	names := make([]string, len(policies))
	for i, n := range policies {
		names[i] = n.String()
	}
	joined := strings.Join(names, ",")
	key, ok := c.m.setKeys[joined]
	if !ok {
		key = hashOf(joined)
		c.m.setKeys[joined] = key
	}
	for _, f := range c.fams {
		a, ok := p.addr(f)
		if !ok {
			continue
		}
		chain := fmt.Sprintf("set-%s-%s-%s", dirName(d), famName(f), key)
		if c.out.chains[chain] == nil {
			ch := &chainSpec{}
			for _, n := range policies {
				pc := policyChain(n, d, f)
				if len(c.out.chains[pc].rules) > 0 {
					ch.rules = append(ch.rules, ruleSpec{text: "jump " + pc, exprs: []expr.Any{nft.Verdict(expr.VerdictJump, pc)}, comment: n.String()})
				}
			}
			cn := counterName(d)
			ch.rules = append(ch.rules, ruleSpec{text: fmt.Sprintf("counter name %q drop", cn), exprs: countDrop(cn)})
			c.out.chains[chain] = ch
		}
		c.out.set(vmapName(d, f), kindVmap, f).elems[string(a.AsSlice())] = chain
		c.out.set("hairpin-"+famName(f), kindPair, f).elems[string(slices.Concat(a.AsSlice(), a.AsSlice()))] = ""
	}
}

// policy adds to out the chain of pol's rules in d, in every family,
// with their sets.
func (c *compiler) policy(out *ruleset, pol *Policy, d Direction) {
	rules := pol.rules(d)
	for _, f := range c.fams {
		ch := &chainSpec{}
		for i := range rules {
			ch.rules = append(ch.rules, c.rule(out, pol, d, i, &rules[i], f)...)
		}
		for i := range ch.rules {
			ch.rules[i].comment = pol.Name.String()
		}
		out.chains[policyChain(pol.Name, d, f)] = ch
	}
}

// rule returns the nft rules of rule r (number i of pol in d) in family
// f: one for its numeric ports (or for every port), one for its named
// ports, each with the peers when it has some.
func (c *compiler) rule(out *ruleset, pol *Policy, d Direction, i int, r *Rule, f podnet.Family) []ruleSpec {
	fn := famName(f)
	peerDir, peerSrc := "saddr", true
	if d == Egress {
		peerDir, peerSrc = "daddr", false
	}
	var peers ruleSpec
	if len(r.Peers) > 0 {
		name := ruleSet(pol.Name, d, i, "peers-"+fn)
		s := out.set(name, kindAddrs, f)
		for _, ar := range c.peerRanges(pol, r, f) {
			s.elems[string(ar.first.AsSlice())] = intervalEnd(ar.last)
		}
		peers = ruleSpec{text: fmt.Sprintf("%s %s @%s ", fn, peerDir, name), exprs: []expr.Any{addrLoad(f, peerSrc, 1), lookup(name, 1)}}
	}
	var numeric, named []Port
	for _, p := range r.Ports {
		if p.Name != "" {
			named = append(named, p)
		} else {
			numeric = append(numeric, p)
		}
	}
	var specs []ruleSpec
	if len(r.Ports) == 0 || len(numeric) > 0 {
		rs := ruleSpec{text: peers.text, exprs: slices.Clone(peers.exprs)}
		if len(numeric) > 0 {
			name := ruleSet(pol.Name, d, i, "ports")
			s := out.set(name, kindPorts, 0)
			for _, r := range portRanges(numeric) {
				s.elems[protoPort(r.proto, r.first)] = protoPort(r.proto, r.last)
			}
			rs.text += fmt.Sprintf("meta l4proto . th dport @%s ", name)
			rs.exprs = append(rs.exprs, append(protoPortLoad(reg0), lookup(name, reg0))...)
		}
		rs.text += "accept"
		specs = append(specs, ruleSpec{text: rs.text, exprs: append(rs.exprs, accept())})
	}
	if len(named) > 0 {
		name := ruleSet(pol.Name, d, i, "named-"+fn)
		c.namedPorts(out.set(name, kindNamed, f), pol, d, r, named, f)
		exprs := slices.Concat(peers.exprs, []expr.Any{nft.DAddr(f, reg0)}, protoPortLoad(reg0+addrLen(f)/4), []expr.Any{lookup(name, reg0), accept()})
		if d == Egress {
			exprs = exprs[len(peers.exprs):] // the set holds peers only
			peers.text = ""
		}
		specs = append(specs, ruleSpec{text: fmt.Sprintf("%s%s daddr . meta l4proto . th dport @%s accept", peers.text, fn, name), exprs: exprs})
	}
	return specs
}

// intervalEnd is the value of an interval ending at last: the address
// after it, or "" when last is the top of the family.
func intervalEnd(last netip.Addr) string {
	if n := last.Next(); n.IsValid() {
		return string(n.AsSlice())
	}
	return ""
}

// peerRanges returns the addresses of family f that r's peers match.
func (c *compiler) peerRanges(pol *Policy, r *Rule, f podnet.Family) []addrRange {
	var out []addrRange
	for i := range r.Peers {
		pe := &r.Peers[i]
		if pe.IPBlock != nil {
			if podnet.FamilyOf(pe.IPBlock.CIDR.Addr()) == f {
				out = append(out, blockRanges(pe.IPBlock)...)
			}
			continue
		}
		c.peerPods(pol, pe, func(p *Pod) {
			if a, ok := p.addr(f); ok {
				out = append(out, addrRange{a, a})
			}
		})
	}
	return normalize(out)
}

// peerPods calls fn with every pod the selectors of pe match.
func (c *compiler) peerPods(pol *Policy, pe *Peer, fn func(*Pod)) {
	match := func(p *Pod) {
		if pe.Pods == nil || pe.Pods.Matches(p.Labels) {
			fn(p)
		}
	}
	if pe.Namespaces == nil {
		for _, p := range c.m.byNS[pol.Namespace] {
			match(p)
		}
		return
	}
	for ns, pods := range c.m.byNS {
		if pe.Namespaces.Matches(c.m.nsLabels(ns)) {
			for _, p := range pods {
				match(p)
			}
		}
	}
}

// namedPorts fills s with address . protocol . port of the pods named
// ports resolve on: for ingress the local pods pol selects, for egress
// the peers (every pod when r has none) — pods an ipBlock of r holds
// included.
func (c *compiler) namedPorts(s *setSpec, pol *Policy, d Direction, r *Rule, named []Port, f podnet.Family) {
	add := func(p *Pod) {
		a, ok := p.addr(f)
		if !ok {
			return
		}
		for _, np := range named {
			if port, ok := p.port(np.Name, np.Protocol); ok {
				s.elems[string(a.AsSlice())+protoPort(np.Protocol, port)] = ""
			}
		}
	}
	if d == Ingress {
		for _, p := range c.m.byNS[pol.Namespace] {
			if p.Local && pol.PodSelector.Matches(p.Labels) {
				add(p)
			}
		}
		return
	}
	var ranges []addrRange
	if len(r.Peers) > 0 {
		ranges = c.peerRanges(pol, r, f)
	}
	for _, pods := range c.m.byNS {
		for _, p := range pods {
			if a, ok := p.addr(f); ok && (len(r.Peers) == 0 || inRanges(ranges, a)) {
				add(p)
			}
		}
	}
}

func inRanges(rs []addrRange, a netip.Addr) bool {
	for _, r := range rs {
		if !a.Less(r.first) && !r.last.Less(a) {
			return true
		}
	}
	return false
}
