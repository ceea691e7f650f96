package service

import (
	"slices"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
)

// ownedChain is one per-Service chain with its full contents.
type ownedChain struct {
	chain iptables.Chain
	rules []iptables.Rule
}

// placed is one rule of a Service in a chain shared by all Services
// (nat and filter SERVICES, NODEPORTS, EXTERNAL-SERVICES), edited in place
// with -I and -D.
type placed struct {
	chain iptables.Chain
	rule  iptables.Rule
	spec  string
}

// rendering is everything one Service contributes to the tables.
type rendering struct {
	chains    []ownedChain
	shared    []placed
	endpoints int // endpoint (SEP) chains
}

// render returns everything s contributes to the tables of the families
// the proxy serves.
func (r *renderer) render(s *Service) (*rendering, error) {
	out := &rendering{}
	aff := s.affinitySeconds()
	for _, f := range r.families {
		fs := r.family(s, f, aff)
		if fs == nil {
			continue
		}
		for _, p := range s.Ports {
			ip := &iptPort{servicePort: fs.port(p), out: out}
			if err := ip.render(); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// iptPort renders one servicePort into iptables rules.
type iptPort struct {
	*servicePort
	out *rendering
}

func (sp *iptPort) natC(name string) iptables.Chain {
	return iptables.Chain{Family: sp.f, Table: iptables.TableNAT, Name: name}
}

func (sp *iptPort) filC(name string) iptables.Chain {
	return iptables.Chain{Family: sp.f, Table: iptables.TableFilter, Name: name}
}

// place adds rule to the shared chain c.
func (sp *iptPort) place(c iptables.Chain, rule iptables.Rule) error {
	spec, err := rule.Spec(sp.f)
	if err != nil {
		return err
	}
	sp.out.shared = append(sp.out.shared, placed{c, rule, spec})
	return nil
}

// render adds the port's own chains, then its rules in the shared chains.
func (sp *iptPort) render() error {
	sp.endpointChains()
	sp.serviceChain()
	sp.localChain()
	if err := sp.clusterIPRule(); err != nil {
		return err
	}
	sp.externalChain()
	if err := sp.externalIPRules(); err != nil {
		return err
	}
	if err := sp.nodePortRule(); err != nil {
		return err
	}
	return nil
}

// endpointChains adds the SEP chain of every endpoint either balancing
// chain uses, once even when both use it.
func (sp *iptPort) endpointChains() {
	seps := map[string]bool{}
	for _, c := range slices.Concat(sp.svcEps, sp.svlEps) {
		if seps[c.chain] {
			continue
		}
		seps[c.chain] = true
		dnat := iptables.Rule{Protocol: sp.np, Matches: []iptables.Match{sp.comment}, Target: iptables.DNATTo(c.ap)}
		if sp.aff > 0 {
			dnat.Matches = append(dnat.Matches, iptables.Recent{Mode: iptables.RecentSet, Name: c.chain})
		}
		sp.out.chains = append(sp.out.chains, ownedChain{sp.natC(c.chain), []iptables.Rule{
			{Source: iptables.Addr{Prefix: hostPrefix(c.ap.Addr())}, Matches: []iptables.Match{sp.comment}, Target: iptables.Jump(sp.r.chains.MarkMasq())},
			dnat,
		}})
	}
	sp.out.endpoints += len(seps)
}

// balance returns the rules spreading new connections evenly over cs;
// with affinity, a client first returns to the endpoint it used last.
func (sp *iptPort) balance(cs []epChoice) []iptables.Rule {
	var rules []iptables.Rule
	if sp.aff > 0 {
		for _, c := range cs {
			rules = append(rules, iptables.Rule{Matches: []iptables.Match{sp.comment, iptables.Recent{Mode: iptables.RecentCheck, Name: c.chain, Seconds: sp.aff, Reap: true}}, Target: iptables.Jump(c.chain)})
		}
	}
	for i, c := range cs {
		rule := iptables.Rule{Matches: []iptables.Match{iptables.Comment(sp.spn + " -> " + c.ap.String())}, Target: iptables.Jump(c.chain)}
		if left := len(cs) - i; left > 1 {
			rule.Matches = append(rule.Matches, iptables.Statistic{Probability: 1 / float64(left)})
		}
		rules = append(rules, rule)
	}
	return rules
}

func (sp *iptPort) serviceChain() {
	if len(sp.svcEps) == 0 {
		return
	}
	var rules []iptables.Rule
	if sp.hasCIDR && sp.cip.IsValid() {
		// Off-cluster clients of the cluster IP (the node itself,
		// other hosts) are masqueraded so replies come back here.
		rules = append(rules, iptables.Rule{Source: iptables.Addr{Prefix: sp.cidr, Not: true}, Destination: iptables.Addr{Prefix: hostPrefix(sp.cip)},
			Protocol: sp.np, Matches: []iptables.Match{iptables.Comment(sp.spn + " cluster IP"), sp.portMatch}, Target: iptables.Jump(sp.r.chains.MarkMasq())})
	}
	sp.out.chains = append(sp.out.chains, ownedChain{sp.natC(sp.svc), append(rules, sp.balance(sp.svcEps)...)})
}

// localChain exists only for a Local traffic policy to jump to.
func (sp *iptPort) localChain() {
	if (sp.intLocal || sp.extLocal) && len(sp.svlEps) > 0 {
		sp.out.chains = append(sp.out.chains, ownedChain{sp.natC(sp.svl), sp.balance(sp.svlEps)})
	}
}

// clusterIPRule sends cluster IP traffic to the chain the internal traffic
// policy selects; without endpoints there it is rejected, or dropped when
// only other nodes have some (internal policy Local), as kube-proxy does.
func (sp *iptPort) clusterIPRule() error {
	if !sp.cip.IsValid() {
		return nil
	}
	intTarget, intEps := sp.svc, sp.svcEps
	if sp.intLocal {
		intTarget, intEps = sp.svl, sp.svlEps
	}
	if len(intEps) > 0 {
		return sp.place(sp.natC(sp.r.chains.Services()), iptables.Rule{Destination: iptables.Addr{Prefix: hostPrefix(sp.cip)}, Protocol: sp.np,
			Matches: []iptables.Match{iptables.Comment(sp.spn + " cluster IP"), sp.portMatch}, Target: iptables.Jump(intTarget)})
	}
	var verdict iptables.Target = iptables.Reject{}
	comment := sp.spn + " has no endpoints"
	if len(sp.svcEps) > 0 {
		verdict, comment = iptables.Drop, sp.spn+" has no local endpoints"
	}
	return sp.place(sp.filC(sp.r.chains.Services()), iptables.Rule{Destination: iptables.Addr{Prefix: hostPrefix(sp.cip)}, Protocol: sp.np,
		Matches: []iptables.Match{iptables.Comment(comment), sp.portMatch}, Target: verdict})
}

// hasExternalChain reports whether the port has an external chain: it
// has external IPs or a node port, and endpoints somewhere.
func (sp *iptPort) hasExternalChain() bool {
	return (len(sp.eips) > 0 || sp.servesNodePort()) && len(sp.svcEps) > 0
}

// externalChain adds the chain external IPs and the node port jump to.
// Under a Local external policy, traffic from pods and from the node
// itself may still use every endpoint (even when this node has none);
// the rest stays on this node, unmasqueraded, so endpoints see the
// client's address, or falls through to the filter's DROP.
func (sp *iptPort) externalChain() {
	if !sp.hasExternalChain() {
		return
	}
	var rules []iptables.Rule
	if sp.extLocal {
		if sp.hasCIDR {
			rules = append(rules, iptables.Rule{Source: iptables.Addr{Prefix: sp.cidr}, Matches: []iptables.Match{iptables.Comment("pod traffic for " + sp.spn + " external destinations")}, Target: iptables.Jump(sp.svc)})
		}
		rules = append(rules,
			iptables.Rule{Matches: []iptables.Match{iptables.Comment("masquerade LOCAL traffic for " + sp.spn + " external destinations"), iptables.AddrType{Src: "LOCAL"}}, Target: iptables.Jump(sp.r.chains.MarkMasq())},
			iptables.Rule{Matches: []iptables.Match{iptables.Comment("route LOCAL traffic for " + sp.spn + " external destinations"), iptables.AddrType{Src: "LOCAL"}}, Target: iptables.Jump(sp.svc)})
		if len(sp.svlEps) > 0 {
			rules = append(rules, iptables.Rule{Target: iptables.Jump(sp.svl)})
		}
	} else {
		rules = append(rules,
			iptables.Rule{Matches: []iptables.Match{iptables.Comment("masquerade traffic for " + sp.spn + " external destinations")}, Target: iptables.Jump(sp.r.chains.MarkMasq())},
			iptables.Rule{Target: iptables.Jump(sp.svc)})
	}
	sp.out.chains = append(sp.out.chains, ownedChain{sp.natC(sp.ext), rules})
}

// externalIPRules sends traffic to each external or load-balancer IP to
// the external chain (a load-balancer IP with source ranges through the
// firewall chain first), and answers what that leaves with a verdict in
// the filter table: extVerdict when there are no endpoints for external
// traffic, DROP for a source outside the ranges.
func (sp *iptPort) externalIPRules() error {
	fw := sp.firewallChain()
	for _, eip := range sp.eips {
		dst := iptables.Addr{Prefix: hostPrefix(eip)}
		gated := slices.Contains(sp.fwIPs, eip)
		if sp.hasExternalChain() {
			target := sp.ext
			if gated {
				target = fw
			}
			if err := sp.place(sp.natC(sp.r.chains.Services()), iptables.Rule{Destination: dst, Protocol: sp.np,
				Matches: []iptables.Match{iptables.Comment(sp.spn + " external IP"), sp.portMatch}, Target: iptables.Jump(target)}); err != nil {
				return err
			}
		}
		verdict, comment := sp.extVerdict, sp.spn+" has no local endpoints"
		switch {
		case len(sp.extEps) > 0 && !gated:
			continue
		case len(sp.extEps) > 0:
			verdict, comment = iptables.Drop, sp.spn+" source not in loadBalancerSourceRanges"
		}
		if err := sp.place(sp.filC(sp.r.chains.ExternalServices()), iptables.Rule{Destination: dst, Protocol: sp.np,
			Matches: []iptables.Match{iptables.Comment(comment), sp.portMatch}, Target: verdict}); err != nil {
			return err
		}
	}
	return nil
}

// firewallChain adds, for a port with load-balancer source ranges, the
// chain that sends their sources on to the external chain; the rest is
// left untranslated for the filter table's DROP. It returns its name.
func (sp *iptPort) firewallChain() string {
	fw := sp.r.chains.Firewall(sp.s.Name, sp.p.Name, sp.proto)
	if len(sp.fwIPs) == 0 || !sp.hasExternalChain() {
		return fw
	}
	var rules []iptables.Rule
	for _, r := range sp.ranges {
		rules = append(rules, iptables.Rule{Source: iptables.Addr{Prefix: r}, Matches: []iptables.Match{iptables.Comment(sp.spn + " loadBalancerSourceRanges")}, Target: iptables.Jump(sp.ext)})
	}
	sp.out.chains = append(sp.out.chains, ownedChain{sp.natC(fw), rules})
	return fw
}

// nodePortRule does for the node port what externalIPRules does for
// external IPs. Loopback destinations are left alone (see
// Chains.NodePorts).
func (sp *iptPort) nodePortRule() error {
	if !sp.servesNodePort() {
		return nil
	}
	npMatch := iptables.Ports{Dst: iptables.Port(sp.p.NodePort)}
	if sp.hasExternalChain() {
		if err := sp.place(sp.natC(sp.r.chains.NodePorts()), iptables.Rule{Protocol: sp.np, Matches: []iptables.Match{sp.comment, npMatch}, Target: iptables.Jump(sp.ext)}); err != nil {
			return err
		}
	}
	if len(sp.extEps) > 0 {
		return nil
	}
	for _, dst := range sp.r.nodePortMatches(sp.f) {
		dst.Protocol, dst.Target = sp.np, sp.extVerdict
		dst.Matches = append([]iptables.Match{iptables.Comment(sp.spn + " has no local endpoints")}, append(dst.Matches, npMatch)...)
		if err := sp.place(sp.filC(sp.r.chains.ExternalServices()), dst); err != nil {
			return err
		}
	}
	return nil
}

// nodePortMatches returns rules (destination and matches only) that
// match the destinations serving node ports in family f: one per address
// of Config.NodePortAddresses, else one for every local address but
// loopback.
func (r *renderer) nodePortMatches(f podnet.Family) []iptables.Rule {
	if len(r.nodePortAddrs) == 0 {
		return []iptables.Rule{{Destination: iptables.Addr{Prefix: loopback(f), Not: true}, Matches: []iptables.Match{iptables.DstLocal}}}
	}
	var out []iptables.Rule
	for _, a := range r.nodePortAddrsOf(f) {
		out = append(out, iptables.Rule{Destination: iptables.Addr{Prefix: hostPrefix(a)}})
	}
	return out
}
