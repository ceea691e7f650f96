package service

import (
	"net/netip"
	"slices"

	"github.com/podnet/podnet/nat"
)

// renderer turns a Service into rules for one proxy configuration.
type renderer struct {
	chains   Chains
	families []nat.Family
	cidr     map[nat.Family]netip.Prefix // cluster CIDR per family
	node     string
	mark     uint32
}

// ownedChain is one per-Service chain with its full contents.
type ownedChain struct {
	chain nat.Chain
	rules []nat.Rule
}

// placed is one rule of a Service in a chain shared by all Services
// (nat and filter SERVICES, NODEPORTS, EXTERNAL-SERVICES), edited in place
// with -I and -D.
type placed struct {
	chain nat.Chain
	rule  nat.Rule
	spec  string
}

// udpPort is what conntrack cleanup needs to know of one UDP port.
type udpPort struct {
	fam      nat.Family
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
			if nat.FamilyOf(ip) == f {
				cip = ip.Unmap()
			}
		}
		var eips []netip.Addr
		for _, ip := range s.ExternalIPs {
			if nat.FamilyOf(ip) == f {
				eips = append(eips, ip.Unmap())
			}
		}
		var eps []Endpoint
		for _, e := range s.Endpoints {
			if nat.FamilyOf(e.Addr) == f {
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
		natC := func(name string) nat.Chain { return nat.Chain{Family: f, Table: nat.TableNAT, Name: name} }
		filC := func(name string) nat.Chain { return nat.Chain{Family: f, Table: nat.TableFilter, Name: name} }
		place := func(c nat.Chain, rule nat.Rule) error {
			spec, err := rule.Spec(f)
			if err != nil {
				return err
			}
			out.shared = append(out.shared, placed{c, rule, spec})
			return nil
		}
		for _, p := range s.Ports {
			proto := p.protocol()
			np := proto.nat()
			spn := portName(s.Name, p.Name)
			comment := nat.Comment(spn)
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
			portMatch := nat.Ports{Dst: nat.Port(p.Port)}
			// SEP chains for every endpoint either chain uses.
			seps := map[string]bool{}
			for _, c := range slices.Concat(svcEps, svlEps) {
				if seps[c.chain] {
					continue
				}
				seps[c.chain] = true
				dnat := nat.Rule{Protocol: np, Matches: []nat.Match{comment}, Target: nat.DNATTo(c.ap)}
				if aff > 0 {
					dnat.Matches = append(dnat.Matches, nat.Recent{Mode: nat.RecentSet, Name: c.chain})
				}
				out.chains = append(out.chains, ownedChain{natC(c.chain), []nat.Rule{
					{Source: nat.Addr{Prefix: hostPrefix(c.ap.Addr())}, Matches: []nat.Match{comment}, Target: nat.Jump(r.chains.MarkMasq())},
					dnat,
				}})
			}
			out.endpoints += len(seps)
			balance := func(cs []epChoice) []nat.Rule {
				var rules []nat.Rule
				if aff > 0 {
					for _, c := range cs {
						rules = append(rules, nat.Rule{Matches: []nat.Match{comment, nat.Recent{Mode: nat.RecentCheck, Name: c.chain, Seconds: aff, Reap: true}}, Target: nat.Jump(c.chain)})
					}
				}
				for i, c := range cs {
					rule := nat.Rule{Matches: []nat.Match{nat.Comment(spn + " -> " + c.ap.String())}, Target: nat.Jump(c.chain)}
					if left := len(cs) - i; left > 1 {
						rule.Matches = append(rule.Matches, nat.Statistic{Probability: 1 / float64(left)})
					}
					rules = append(rules, rule)
				}
				return rules
			}
			if len(svcEps) > 0 {
				var rules []nat.Rule
				if hasCIDR && cip.IsValid() {
					// Off-cluster clients of the cluster IP (the node itself,
					// other hosts) are masqueraded so replies come back here.
					rules = append(rules, nat.Rule{Source: nat.Addr{Prefix: cidr, Not: true}, Destination: nat.Addr{Prefix: hostPrefix(cip)},
						Protocol: np, Matches: []nat.Match{nat.Comment(spn + " cluster IP"), portMatch}, Target: nat.Jump(r.chains.MarkMasq())})
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
			var extVerdict nat.Target = nat.Reject{}
			if len(svcEps) > 0 {
				extVerdict = nat.Drop
			}
			if cip.IsValid() {
				if len(intEps) > 0 {
					if err := place(natC(r.chains.Services()), nat.Rule{Destination: nat.Addr{Prefix: hostPrefix(cip)}, Protocol: np,
						Matches: []nat.Match{nat.Comment(spn + " cluster IP"), portMatch}, Target: nat.Jump(intTarget)}); err != nil {
						return nil, err
					}
				} else {
					if err := place(filC(r.chains.Services()), nat.Rule{Destination: nat.Addr{Prefix: hostPrefix(cip)}, Protocol: np,
						Matches: []nat.Match{nat.Comment(spn + " has no endpoints"), portMatch}, Target: nat.Reject{}}); err != nil {
						return nil, err
					}
				}
			}
			hasExt := len(eips) > 0 || (nodePorts && p.NodePort != 0)
			if hasExt && len(extEps) > 0 {
				var rules []nat.Rule
				if extLocal {
					if hasCIDR {
						rules = append(rules, nat.Rule{Source: nat.Addr{Prefix: cidr}, Matches: []nat.Match{nat.Comment("pod traffic for " + spn + " external destinations")}, Target: nat.Jump(svc)})
					}
					rules = append(rules,
						nat.Rule{Matches: []nat.Match{nat.Comment("masquerade LOCAL traffic for " + spn + " external destinations"), nat.AddrType{Src: "LOCAL"}}, Target: nat.Jump(r.chains.MarkMasq())},
						nat.Rule{Matches: []nat.Match{nat.Comment("route LOCAL traffic for " + spn + " external destinations"), nat.AddrType{Src: "LOCAL"}}, Target: nat.Jump(svc)},
						nat.Rule{Target: nat.Jump(svl)})
				} else {
					rules = append(rules,
						nat.Rule{Matches: []nat.Match{nat.Comment("masquerade traffic for " + spn + " external destinations")}, Target: nat.Jump(r.chains.MarkMasq())},
						nat.Rule{Target: nat.Jump(svc)})
				}
				out.chains = append(out.chains, ownedChain{natC(ext), rules})
			}
			for _, eip := range eips {
				rule := nat.Rule{Destination: nat.Addr{Prefix: hostPrefix(eip)}, Protocol: np, Matches: []nat.Match{nat.Comment(spn + " external IP"), portMatch}}
				c := natC(r.chains.Services())
				if len(extEps) > 0 {
					rule.Target = nat.Jump(ext)
				} else {
					c, rule.Target = filC(r.chains.ExternalServices()), extVerdict
					rule.Matches[0] = nat.Comment(spn + " has no local endpoints")
				}
				if err := place(c, rule); err != nil {
					return nil, err
				}
			}
			if nodePorts && p.NodePort != 0 {
				npMatch := nat.Ports{Dst: nat.Port(p.NodePort)}
				var err error
				if len(extEps) > 0 {
					err = place(natC(r.chains.NodePorts()), nat.Rule{Protocol: np, Matches: []nat.Match{comment, npMatch}, Target: nat.Jump(ext)})
				} else {
					err = place(filC(r.chains.ExternalServices()), nat.Rule{Protocol: np,
						Matches: []nat.Match{nat.Comment(spn + " has no local endpoints"), nat.DstLocal, npMatch}, Target: extVerdict})
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
