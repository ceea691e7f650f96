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
			st := m.isolation[n]
			if st == nil {
				st = c.stagesOf(p)
				m.isolation[n] = st
			}
			applies := false
			for t := range st {
				for _, pn := range st[t][i] {
					if k := (fragKey{tier(t), pn, d}); !active[k] {
						active[k] = true
						c.add(k, c.fragment(k))
					}
				}
				applies = applies || len(st[t][i]) > 0
			}
			if applies {
				c.isolate(p, d, st)
			}
		}
	}
	return c.out
}

// stagesOf returns the policies that apply to local pod p.
func (c *compiler) stagesOf(p *Pod) *stages {
	st := &stages{}
	for i, d := range []Direction{Egress, Ingress} {
		st[tierNetwork][i] = c.policiesOf(p, d)
		for _, t := range []tier{tierAdmin, tierBaseline} {
			var ts []*tiered
			for _, tp := range c.m.tierMap(t) {
				if len(tp.rules(d)) > 0 && tp.subject.selects(p, c.m.nsLabels(p.Namespace)) {
					ts = append(ts, tp)
				}
			}
			// By priority (0 for baselines), then name: the API leaves
			// the order of equal priorities undefined.
			slices.SortFunc(ts, func(a, b *tiered) int {
				if a.priority != b.priority {
					return int(a.priority - b.priority)
				}
				return strings.Compare(a.name, b.name)
			})
			for _, tp := range ts {
				st[t][i] = append(st[t][i], Name{Name: tp.name})
			}
		}
	}
	return st
}

// fragment returns the chain and sets of policy k.n in direction k.d,
// compiled now unless the model holds them.
func (c *compiler) fragment(k fragKey) *ruleset {
	if f := c.m.frags[k]; f != nil {
		return f
	}
	f := newRuleset()
	if k.t == tierNetwork {
		c.policy(f, c.m.policies[k.n], k.d)
	} else {
		c.tiered(f, c.m.tierMap(k.t)[k.n.Name], k.d)
	}
	c.m.frags[k] = f
	return f
}

// add puts a fragment's sets and chains into the output: an admin
// policy's sets only, since its rules go into the chains of the sets of
// admin policies that hold it.
func (c *compiler) add(k fragKey, f *ruleset) {
	maps.Copy(c.out.sets, f.sets)
	if k.t != tierAdmin {
		maps.Copy(c.out.chains, f.chains)
	}
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

// setKey returns the hash naming the set of policies joined.
func (c *compiler) setKey(joined string) string {
	key, ok := c.m.setKeys[joined]
	if !ok {
		key = hashOf(joined)
		c.m.setKeys[joined] = key
	}
	return key
}

// isolate leads local pod p's traffic in d to the chain of its set of
// policies, and lets it reach itself. That chain jumps to the chain of
// the pod's admin policies, whose Pass and end return; then, when
// NetworkPolicies isolate the pod, to each one's chain, and counts and
// drops what none accepted; else to each baseline policy's chain, and
// what none decided goes on (accepted).
func (c *compiler) isolate(p *Pod, d Direction, st *stages) {
	i := dirIndex(d)
	policies, admins, baselines := st[tierNetwork][i], st[tierAdmin][i], st[tierBaseline][i]
	joined := joinNames(policies)
	if len(admins)+len(baselines) > 0 {
		joined = "admin:" + joinNames(admins) + "|" + joined + "|baseline:" + joinNames(baselines)
	}
	key := c.setKey(joined)
	for _, f := range c.fams {
		a, ok := p.addr(f)
		if !ok {
			continue
		}
		chain := fmt.Sprintf("set-%s-%s-%s", dirName(d), famName(f), key)
		if c.out.chains[chain] == nil {
			ch := &chainSpec{}
			if len(admins) > 0 {
				ac := c.adminChain(admins, d, f)
				ch.rules = append(ch.rules, ruleSpec{text: "jump " + ac, exprs: []expr.Any{nft.Verdict(expr.VerdictJump, ac)}, comment: "admin"})
			}
			for _, n := range policies {
				pc := policyChain(n, d, f)
				if len(c.out.chains[pc].rules) > 0 {
					ch.rules = append(ch.rules, ruleSpec{text: "jump " + pc, exprs: []expr.Any{nft.Verdict(expr.VerdictJump, pc)}, comment: n.String()})
				}
			}
			if len(policies) > 0 {
				cn := counterName(d)
				ch.rules = append(ch.rules, ruleSpec{text: fmt.Sprintf("counter name %q drop", cn), exprs: countDrop(cn)})
			} else {
				for _, n := range baselines {
					t := c.m.baselines[n.Name]
					bc := tierChain(t, d, f)
					ch.rules = append(ch.rules, ruleSpec{text: "jump " + bc, exprs: []expr.Any{nft.Verdict(expr.VerdictJump, bc)}, comment: t.id()})
				}
			}
			c.out.chains[chain] = ch
		}
		c.out.set(vmapName(d, f), kindVmap, f).elems[string(a.AsSlice())] = chain
		c.out.set("hairpin-"+famName(f), kindPair, f).elems[string(slices.Concat(a.AsSlice(), a.AsSlice()))] = ""
	}
}

func joinNames(ns []Name) string {
	names := make([]string, len(ns))
	for i, n := range ns {
		names[i] = n.String()
	}
	return strings.Join(names, ",")
}

// verdict is what a rule does with the packets it matches.
type verdict struct {
	text  string
	exprs []expr.Any
}

var acceptVerdict = verdict{"accept", []expr.Any{accept()}}

// actionVerdict returns the verdict of an admin or baseline rule's action
// in d: Pass returns from the chain of the pod's admin policies.
func actionVerdict(a Action, d Direction) verdict {
	switch a {
	case Allow:
		return acceptVerdict
	case Deny:
		return verdict{fmt.Sprintf("counter name %q drop", counterName(d)), countDrop(counterName(d))}
	}
	return verdict{"return", []expr.Any{nft.Verdict(expr.VerdictReturn, "")}}
}

// policy adds to out the chain of pol's rules in d, in every family,
// with their sets.
func (c *compiler) policy(out *ruleset, pol *Policy, d Direction) {
	rules := pol.rules(d)
	o := owner{id: pol.Name.String(), ns: pol.Namespace, pol: pol}
	for _, f := range c.fams {
		ch := &chainSpec{}
		for i := range rules {
			ch.rules = append(ch.rules, c.rule(out, o, d, i, &rules[i], f, acceptVerdict)...)
		}
		for i := range ch.rules {
			ch.rules[i].comment = pol.Name.String()
		}
		out.chains[policyChain(pol.Name, d, f)] = ch
	}
}

// tiered adds to out the chain of admin or baseline policy t's rules in
// d, in every family, with their sets. Rules keep their order (the
// first that matches decides); an admin policy's chain only holds its
// rules for the chains of the sets of admin policies.
func (c *compiler) tiered(out *ruleset, t *tiered, d Direction) {
	rules := t.rules(d)
	o := owner{id: t.id(), t: t}
	for _, f := range c.fams {
		ch := &chainSpec{}
		for i := range rules {
			ch.rules = append(ch.rules, c.rule(out, o, d, i, &rules[i], f, actionVerdict(t.actions[dirIndex(d)][i], d))...)
		}
		for i := range ch.rules {
			ch.rules[i].comment = t.id()
		}
		out.chains[tierChain(t, d, f)] = ch
	}
}

// adminChain adds, unless present, the chain of the rules of the admin
// policies names (in order) in d and f, and returns its name. Its rules
// are theirs in order: Allow accepts, Deny counts and drops, Pass
// returns, and so does the end of the chain.
func (c *compiler) adminChain(names []Name, d Direction, f podnet.Family) string {
	name := fmt.Sprintf("adm-%s-%s-%s", dirName(d), famName(f), c.setKey("admin:"+joinNames(names)))
	if c.out.chains[name] != nil {
		return name
	}
	ch := &chainSpec{}
	for _, n := range names {
		t := c.m.admins[n.Name]
		ch.rules = append(ch.rules, c.m.frags[fragKey{tierAdmin, n, d}].chains[tierChain(t, d, f)].rules...)
	}
	c.out.chains[name] = ch
	return name
}

// rule returns the nft rules of rule r (number i of o in d) in family
// f, ending in v: one for its numeric ports (or for every port), one for
// its named ports, each with the peers when it has some.
func (c *compiler) rule(out *ruleset, o owner, d Direction, i int, r *Rule, f podnet.Family, v verdict) []ruleSpec {
	fn := famName(f)
	peerDir, peerSrc := "saddr", true
	if d == Egress {
		peerDir, peerSrc = "daddr", false
	}
	var peers ruleSpec
	if len(r.Peers) > 0 {
		name := ruleSet(o.id, d, i, "peers-"+fn)
		s := out.set(name, kindAddrs, f)
		for _, ar := range c.peerRanges(o.ns, r, f) {
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
			name := ruleSet(o.id, d, i, "ports")
			s := out.set(name, kindPorts, 0)
			for _, r := range portRanges(numeric) {
				s.elems[protoPort(r.proto, r.first)] = protoPort(r.proto, r.last)
			}
			rs.text += fmt.Sprintf("meta l4proto . th dport @%s ", name)
			rs.exprs = append(rs.exprs, append(protoPortLoad(reg0), lookup(name, reg0))...)
		}
		rs.text += v.text
		specs = append(specs, ruleSpec{text: rs.text, exprs: slices.Concat(rs.exprs, v.exprs)})
	}
	if len(named) > 0 {
		name := ruleSet(o.id, d, i, "named-"+fn)
		c.namedPorts(out.set(name, kindNamed, f), o, d, r, named, f)
		exprs := slices.Concat(peers.exprs, []expr.Any{nft.DAddr(f, reg0)}, protoPortLoad(reg0+addrLen(f)/4), []expr.Any{lookup(name, reg0)}, v.exprs)
		if d == Egress {
			exprs = exprs[len(peers.exprs):] // the set holds peers only
			peers.text = ""
		}
		specs = append(specs, ruleSpec{text: fmt.Sprintf("%s%s daddr . meta l4proto . th dport @%s %s", peers.text, fn, name, v.text), exprs: exprs})
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
func (c *compiler) peerRanges(ns string, r *Rule, f podnet.Family) []addrRange {
	var out []addrRange
	for i := range r.Peers {
		pe := &r.Peers[i]
		if pe.IPBlock != nil {
			if podnet.FamilyOf(pe.IPBlock.CIDR.Addr()) == f {
				out = append(out, blockRanges(pe.IPBlock)...)
			}
			continue
		}
		if pe.nodes != nil {
			for _, n := range c.m.nodes {
				if pe.nodes.Matches(n.Labels) {
					for _, a := range n.IPs {
						if podnet.FamilyOf(a) == f {
							out = append(out, addrRange{a, a})
						}
					}
				}
			}
			continue
		}
		c.peerPods(ns, pe, func(p *Pod) {
			if a, ok := p.addr(f); ok {
				out = append(out, addrRange{a, a})
			}
		})
	}
	return normalize(out)
}

// peerPods calls fn with every pod the selectors of pe match (in
// namespace ns when pe has no namespace selector).
func (c *compiler) peerPods(ns string, pe *Peer, fn func(*Pod)) {
	match := func(p *Pod) {
		if pe.Pods == nil || pe.Pods.Matches(p.Labels) {
			fn(p)
		}
	}
	if pe.Namespaces == nil {
		for _, p := range c.m.byNS[ns] {
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
// ports resolve on: for ingress the local pods o selects, for egress
// the peers (every pod when r has none) — pods an ipBlock of r holds
// included.
func (c *compiler) namedPorts(s *setSpec, o owner, d Direction, r *Rule, named []Port, f podnet.Family) {
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
		pods := c.m.local
		if o.pol != nil {
			pods = c.m.byNS[o.ns]
		}
		for _, p := range pods {
			if p.Local && o.selects(c.m, p) {
				add(p)
			}
		}
		return
	}
	var ranges []addrRange
	if len(r.Peers) > 0 {
		ranges = c.peerRanges(o.ns, r, f)
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
