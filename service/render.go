package service

import (
	"net/netip"
	"slices"

	"github.com/podnet/podnet/iptables"
)

// renderer turns a Service into rules for one proxy configuration.
type renderer struct {
	chains   Chains
	families []iptables.Family
	cidr     map[iptables.Family]netip.Prefix // cluster CIDR per family
	node     string
	mark     uint32
}

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

// udpPort is what conntrack cleanup needs to know of one UDP port.
type udpPort struct {
	fam      iptables.Family
	ips      []netip.Addr // cluster and external IPs
	port     uint16
	nodePort uint16
	eps      []netip.Addr // endpoints traffic may be sent to
}

// rendering is everything one Service contributes to the tables.
type rendering struct {
	chains    []ownedChain
	shared    []placed
	udp       []udpPort
	endpoints int // endpoint (SEP) chains
}

type epChoice struct {
	ap    netip.AddrPort
	chain string
}

// pick returns the endpoints that take new connections: the ready ones,
// or, when none is ready, the serving terminating ones.
func pick(eps []Endpoint, local func(Endpoint) bool) []Endpoint {
	var ready, term []Endpoint
	for _, e := range eps {
		if !local(e) {
			continue
		}
		switch {
		case e.Ready && !e.Terminating:
			ready = append(ready, e)
		case e.Serving && e.Terminating:
			term = append(term, e)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return term
}

func (r *renderer) render(s *Service) (*rendering, error) {
	out := &rendering{}
	aff := s.affinitySeconds()
	for _, f := range r.families {
		var cip netip.Addr
		for _, ip := range s.ClusterIPs {
			if iptables.FamilyOf(ip) == f {
				cip = ip.Unmap()
			}
		}
		var eips []netip.Addr
		for _, ip := range s.ExternalIPs {
			if iptables.FamilyOf(ip) == f {
				eips = append(eips, ip.Unmap())
			}
		}
		var eps []Endpoint
		for _, e := range s.Endpoints {
			if iptables.FamilyOf(e.Addr) == f {
				eps = append(eps, e)
			}
		}
		nodePorts := s.hasNodePort() && (cip.IsValid() || len(s.ClusterIPs) == 0 && len(eps) > 0)
		if !cip.IsValid() && len(eips) == 0 && !nodePorts {
			continue
		}
		svcSel := pick(eps, func(Endpoint) bool { return true })
		svlSel := pick(eps, func(e Endpoint) bool { return r.node != "" && e.NodeName == r.node })
		slices.SortFunc(svcSel, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
		slices.SortFunc(svlSel, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
		intLocal := s.InternalTrafficPolicy == PolicyLocal
		extLocal := s.ExternalTrafficPolicy == PolicyLocal
		cidr, hasCIDR := r.cidr[f]
		natC := func(name string) iptables.Chain {
			return iptables.Chain{Family: f, Table: iptables.TableNAT, Name: name}
		}
		filC := func(name string) iptables.Chain {
			return iptables.Chain{Family: f, Table: iptables.TableFilter, Name: name}
		}
		place := func(c iptables.Chain, rule iptables.Rule) error {
			spec, err := rule.Spec(f)
			if err != nil {
				return err
			}
			out.shared = append(out.shared, placed{c, rule, spec})
			return nil
		}
		for _, p := range s.Ports {
			proto := p.protocol()
			np := proto.rule()
			spn := portName(s.Name, p.Name)
			comment := iptables.Comment(spn)
			target := func(e Endpoint) netip.AddrPort {
				port := p.TargetPort
				if v, ok := e.Ports[p.Name]; ok {
					port = v
				}
				if port == 0 {
					port = p.Port
				}
				return netip.AddrPortFrom(e.Addr.Unmap(), port)
			}
			choices := func(sel []Endpoint) []epChoice {
				cs := make([]epChoice, len(sel))
				for i, e := range sel {
					ap := target(e)
					cs[i] = epChoice{ap, r.chains.Endpoint(s.Name, p.Name, proto, ap)}
				}
				return cs
			}
			svcEps, svlEps := choices(svcSel), choices(svlSel)
			svc := r.chains.Service(s.Name, p.Name, proto)
			svl := r.chains.Local(s.Name, p.Name, proto)
			ext := r.chains.External(s.Name, p.Name, proto)
			portMatch := iptables.Ports{Dst: iptables.Port(p.Port)}
			// SEP chains for every endpoint either chain uses.
			seps := map[string]bool{}
			for _, c := range slices.Concat(svcEps, svlEps) {
				if seps[c.chain] {
					continue
				}
				seps[c.chain] = true
				dnat := iptables.Rule{Protocol: np, Matches: []iptables.Match{comment}, Target: iptables.DNATTo(c.ap)}
				if aff > 0 {
					dnat.Matches = append(dnat.Matches, iptables.Recent{Mode: iptables.RecentSet, Name: c.chain})
				}
				out.chains = append(out.chains, ownedChain{natC(c.chain), []iptables.Rule{
					{Source: iptables.Addr{Prefix: hostPrefix(c.ap.Addr())}, Matches: []iptables.Match{comment}, Target: iptables.Jump(r.chains.MarkMasq())},
					dnat,
				}})
			}
			out.endpoints += len(seps)
			balance := func(cs []epChoice) []iptables.Rule {
				var rules []iptables.Rule
				if aff > 0 {
					for _, c := range cs {
						rules = append(rules, iptables.Rule{Matches: []iptables.Match{comment, iptables.Recent{Mode: iptables.RecentCheck, Name: c.chain, Seconds: aff, Reap: true}}, Target: iptables.Jump(c.chain)})
					}
				}
				for i, c := range cs {
					rule := iptables.Rule{Matches: []iptables.Match{iptables.Comment(spn + " -> " + c.ap.String())}, Target: iptables.Jump(c.chain)}
					if left := len(cs) - i; left > 1 {
						rule.Matches = append(rule.Matches, iptables.Statistic{Probability: 1 / float64(left)})
					}
					rules = append(rules, rule)
				}
				return rules
			}
			if len(svcEps) > 0 {
				var rules []iptables.Rule
				if hasCIDR && cip.IsValid() {
					// Off-cluster clients of the cluster IP (the node itself,
					// other hosts) are masqueraded so replies come back here.
					rules = append(rules, iptables.Rule{Source: iptables.Addr{Prefix: cidr, Not: true}, Destination: iptables.Addr{Prefix: hostPrefix(cip)},
						Protocol: np, Matches: []iptables.Match{iptables.Comment(spn + " cluster IP"), portMatch}, Target: iptables.Jump(r.chains.MarkMasq())})
				}
				out.chains = append(out.chains, ownedChain{natC(svc), append(rules, balance(svcEps)...)})
			}
			if (intLocal || extLocal) && len(svlEps) > 0 {
				out.chains = append(out.chains, ownedChain{natC(svl), balance(svlEps)})
			}
			intTarget, intEps := svc, svcEps
			if intLocal {
				intTarget, intEps = svl, svlEps
			}
			extEps := svcEps
			if extLocal {
				extEps = svlEps
			}
			// No (local) endpoints: REJECT when there are none at all,
			// DROP when only other nodes have some (kube-proxy does the same).
			var extVerdict iptables.Target = iptables.Reject{}
			if len(svcEps) > 0 {
				extVerdict = iptables.Drop
			}
			if cip.IsValid() {
				if len(intEps) > 0 {
					if err := place(natC(r.chains.Services()), iptables.Rule{Destination: iptables.Addr{Prefix: hostPrefix(cip)}, Protocol: np,
						Matches: []iptables.Match{iptables.Comment(spn + " cluster IP"), portMatch}, Target: iptables.Jump(intTarget)}); err != nil {
						return nil, err
					}
				} else {
					if err := place(filC(r.chains.Services()), iptables.Rule{Destination: iptables.Addr{Prefix: hostPrefix(cip)}, Protocol: np,
						Matches: []iptables.Match{iptables.Comment(spn + " has no endpoints"), portMatch}, Target: iptables.Reject{}}); err != nil {
						return nil, err
					}
				}
			}
			hasExt := len(eips) > 0 || (nodePorts && p.NodePort != 0)
			if hasExt && len(extEps) > 0 {
				var rules []iptables.Rule
				if extLocal {
					if hasCIDR {
						rules = append(rules, iptables.Rule{Source: iptables.Addr{Prefix: cidr}, Matches: []iptables.Match{iptables.Comment("pod traffic for " + spn + " external destinations")}, Target: iptables.Jump(svc)})
					}
					rules = append(rules,
						iptables.Rule{Matches: []iptables.Match{iptables.Comment("masquerade LOCAL traffic for " + spn + " external destinations"), iptables.AddrType{Src: "LOCAL"}}, Target: iptables.Jump(r.chains.MarkMasq())},
						iptables.Rule{Matches: []iptables.Match{iptables.Comment("route LOCAL traffic for " + spn + " external destinations"), iptables.AddrType{Src: "LOCAL"}}, Target: iptables.Jump(svc)},
						iptables.Rule{Target: iptables.Jump(svl)})
				} else {
					rules = append(rules,
						iptables.Rule{Matches: []iptables.Match{iptables.Comment("masquerade traffic for " + spn + " external destinations")}, Target: iptables.Jump(r.chains.MarkMasq())},
						iptables.Rule{Target: iptables.Jump(svc)})
				}
				out.chains = append(out.chains, ownedChain{natC(ext), rules})
			}
			for _, eip := range eips {
				rule := iptables.Rule{Destination: iptables.Addr{Prefix: hostPrefix(eip)}, Protocol: np, Matches: []iptables.Match{iptables.Comment(spn + " external IP"), portMatch}}
				c := natC(r.chains.Services())
				if len(extEps) > 0 {
					rule.Target = iptables.Jump(ext)
				} else {
					c, rule.Target = filC(r.chains.ExternalServices()), extVerdict
					rule.Matches[0] = iptables.Comment(spn + " has no local endpoints")
				}
				if err := place(c, rule); err != nil {
					return nil, err
				}
			}
			if nodePorts && p.NodePort != 0 {
				npMatch := iptables.Ports{Dst: iptables.Port(p.NodePort)}
				var err error
				if len(extEps) > 0 {
					err = place(natC(r.chains.NodePorts()), iptables.Rule{Protocol: np, Matches: []iptables.Match{comment, npMatch}, Target: iptables.Jump(ext)})
				} else {
					err = place(filC(r.chains.ExternalServices()), iptables.Rule{Protocol: np,
						Matches: []iptables.Match{iptables.Comment(spn + " has no local endpoints"), iptables.DstLocal, npMatch}, Target: extVerdict})
				}
				if err != nil {
					return nil, err
				}
			}
			if proto == UDP {
				u := udpPort{fam: f, port: p.Port}
				if nodePorts {
					u.nodePort = p.NodePort
				}
				if cip.IsValid() {
					u.ips = append(u.ips, cip)
				}
				u.ips = append(u.ips, eips...)
				for _, c := range slices.Concat(svcEps, svlEps) {
					if !slices.Contains(u.eps, c.ap.Addr()) {
						u.eps = append(u.eps, c.ap.Addr())
					}
				}
				out.udp = append(out.udp, u)
			}
		}
	}
	return out, nil
}
