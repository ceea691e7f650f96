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

// render returns everything s contributes to the tables of the families
// the proxy serves.
func (r *renderer) render(s *Service) (*rendering, error) {
	out := &rendering{}
	aff := s.affinitySeconds()
	for _, f := range r.families {
		fs := r.family(s, f, aff, out)
		if fs == nil {
			continue
		}
		for _, p := range s.Ports {
			if err := fs.port(p).render(); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// familyService is a Service as one family sees it.
type familyService struct {
	r         *renderer
	s         *Service
	f         iptables.Family
	out       *rendering
	aff       uint32       // ClientIP affinity timeout, 0 without affinity
	cip       netip.Addr   // cluster IP; invalid when s has none in f
	eips      []netip.Addr // external IPs
	nodePorts bool         // node ports are served in f
	// Endpoints that take new connections: all of them, and those on
	// this node.
	svcSel, svlSel     []Endpoint
	intLocal, extLocal bool // traffic policies are Local
	cidr               netip.Prefix
	hasCIDR            bool
}

// family returns the part of s in family f, or nil when s has nothing to
// render there.
func (r *renderer) family(s *Service, f iptables.Family, aff uint32, out *rendering) *familyService {
	fs := &familyService{r: r, s: s, f: f, out: out, aff: aff}
	for _, ip := range s.ClusterIPs {
		if iptables.FamilyOf(ip) == f {
			fs.cip = ip.Unmap()
		}
	}
	for _, ip := range s.ExternalIPs {
		if iptables.FamilyOf(ip) == f {
			fs.eips = append(fs.eips, ip.Unmap())
		}
	}
	var eps []Endpoint
	for _, e := range s.Endpoints {
		if iptables.FamilyOf(e.Addr) == f {
			eps = append(eps, e)
		}
	}
	fs.nodePorts = s.hasNodePort() && (fs.cip.IsValid() || len(s.ClusterIPs) == 0 && len(eps) > 0)
	if !fs.cip.IsValid() && len(fs.eips) == 0 && !fs.nodePorts {
		return nil
	}
	fs.svcSel = pick(eps, func(Endpoint) bool { return true })
	fs.svlSel = pick(eps, func(e Endpoint) bool { return r.node != "" && e.NodeName == r.node })
	slices.SortFunc(fs.svcSel, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
	slices.SortFunc(fs.svlSel, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
	fs.intLocal = s.InternalTrafficPolicy == PolicyLocal
	fs.extLocal = s.ExternalTrafficPolicy == PolicyLocal
	fs.cidr, fs.hasCIDR = r.cidr[f]
	return fs
}

func (fs *familyService) natC(name string) iptables.Chain {
	return iptables.Chain{Family: fs.f, Table: iptables.TableNAT, Name: name}
}

func (fs *familyService) filC(name string) iptables.Chain {
	return iptables.Chain{Family: fs.f, Table: iptables.TableFilter, Name: name}
}

// place adds rule to the shared chain c.
func (fs *familyService) place(c iptables.Chain, rule iptables.Rule) error {
	spec, err := rule.Spec(fs.f)
	if err != nil {
		return err
	}
	fs.out.shared = append(fs.out.shared, placed{c, rule, spec})
	return nil
}

// servicePort is one port of a familyService, with its chains and the
// endpoints they balance over.
type servicePort struct {
	*familyService
	p         Port
	proto     Protocol
	np        iptables.Protocol
	spn       string // "namespace/name:port"
	comment   iptables.Comment
	portMatch iptables.Ports
	// Per-port chains: balancing over all endpoints, over this node's
	// endpoints, and the entry for external IPs and node ports.
	svc, svl, ext  string
	svcEps, svlEps []epChoice
	extEps         []epChoice // the endpoints external traffic may use
	// extVerdict answers external traffic when extEps is empty.
	extVerdict iptables.Target
}

func (fs *familyService) port(p Port) *servicePort {
	sp := &servicePort{familyService: fs, p: p, proto: p.protocol()}
	sp.np = sp.proto.rule()
	sp.spn = portName(fs.s.Name, p.Name)
	sp.comment = iptables.Comment(sp.spn)
	sp.portMatch = iptables.Ports{Dst: iptables.Port(p.Port)}
	sp.svcEps, sp.svlEps = sp.choices(fs.svcSel), sp.choices(fs.svlSel)
	sp.svc = fs.r.chains.Service(fs.s.Name, p.Name, sp.proto)
	sp.svl = fs.r.chains.Local(fs.s.Name, p.Name, sp.proto)
	sp.ext = fs.r.chains.External(fs.s.Name, p.Name, sp.proto)
	sp.extEps = sp.svcEps
	if fs.extLocal {
		sp.extEps = sp.svlEps
	}
	// No (local) endpoints: REJECT when there are none at all,
	// DROP when only other nodes have some (kube-proxy does the same).
	sp.extVerdict = iptables.Reject{}
	if len(sp.svcEps) > 0 {
		sp.extVerdict = iptables.Drop
	}
	return sp
}

// render adds the port's own chains, then its rules in the shared chains.
func (sp *servicePort) render() error {
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
	if sp.proto == UDP {
		sp.out.udp = append(sp.out.udp, sp.udp())
	}
	return nil
}

// target returns where connections to e for this port go.
func (sp *servicePort) target(e Endpoint) netip.AddrPort {
	port := sp.p.TargetPort
	if v, ok := e.Ports[sp.p.Name]; ok {
		port = v
	}
	if port == 0 {
		port = sp.p.Port
	}
	return netip.AddrPortFrom(e.Addr.Unmap(), port)
}

func (sp *servicePort) choices(sel []Endpoint) []epChoice {
	cs := make([]epChoice, len(sel))
	for i, e := range sel {
		ap := sp.target(e)
		cs[i] = epChoice{ap, sp.r.chains.Endpoint(sp.s.Name, sp.p.Name, sp.proto, ap)}
	}
	return cs
}

// endpointChains adds the SEP chain of every endpoint either balancing
// chain uses, once even when both use it.
func (sp *servicePort) endpointChains() {
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
func (sp *servicePort) balance(cs []epChoice) []iptables.Rule {
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

func (sp *servicePort) serviceChain() {
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
func (sp *servicePort) localChain() {
	if (sp.intLocal || sp.extLocal) && len(sp.svlEps) > 0 {
		sp.out.chains = append(sp.out.chains, ownedChain{sp.natC(sp.svl), sp.balance(sp.svlEps)})
	}
}

// clusterIPRule sends cluster IP traffic to the chain the internal traffic
// policy selects, or rejects it when that chain has no endpoints.
func (sp *servicePort) clusterIPRule() error {
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
	return sp.place(sp.filC(sp.r.chains.Services()), iptables.Rule{Destination: iptables.Addr{Prefix: hostPrefix(sp.cip)}, Protocol: sp.np,
		Matches: []iptables.Match{iptables.Comment(sp.spn + " has no endpoints"), sp.portMatch}, Target: iptables.Reject{}})
}

// servesNodePort reports whether this port has a node port in this family.
func (sp *servicePort) servesNodePort() bool { return sp.nodePorts && sp.p.NodePort != 0 }

// externalChain adds the chain external IPs and the node port jump to.
// Under a Local external policy, traffic from pods and from the node
// itself may still use every endpoint; the rest stays on this node,
// unmasqueraded, so endpoints see the client's address.
func (sp *servicePort) externalChain() {
	hasExt := len(sp.eips) > 0 || sp.servesNodePort()
	if !hasExt || len(sp.extEps) == 0 {
		return
	}
	var rules []iptables.Rule
	if sp.extLocal {
		if sp.hasCIDR {
			rules = append(rules, iptables.Rule{Source: iptables.Addr{Prefix: sp.cidr}, Matches: []iptables.Match{iptables.Comment("pod traffic for " + sp.spn + " external destinations")}, Target: iptables.Jump(sp.svc)})
		}
		rules = append(rules,
			iptables.Rule{Matches: []iptables.Match{iptables.Comment("masquerade LOCAL traffic for " + sp.spn + " external destinations"), iptables.AddrType{Src: "LOCAL"}}, Target: iptables.Jump(sp.r.chains.MarkMasq())},
			iptables.Rule{Matches: []iptables.Match{iptables.Comment("route LOCAL traffic for " + sp.spn + " external destinations"), iptables.AddrType{Src: "LOCAL"}}, Target: iptables.Jump(sp.svc)},
			iptables.Rule{Target: iptables.Jump(sp.svl)})
	} else {
		rules = append(rules,
			iptables.Rule{Matches: []iptables.Match{iptables.Comment("masquerade traffic for " + sp.spn + " external destinations")}, Target: iptables.Jump(sp.r.chains.MarkMasq())},
			iptables.Rule{Target: iptables.Jump(sp.svc)})
	}
	sp.out.chains = append(sp.out.chains, ownedChain{sp.natC(sp.ext), rules})
}

// externalIPRules sends traffic to each external IP to the external chain,
// or answers it with extVerdict when there is none.
func (sp *servicePort) externalIPRules() error {
	for _, eip := range sp.eips {
		rule := iptables.Rule{Destination: iptables.Addr{Prefix: hostPrefix(eip)}, Protocol: sp.np, Matches: []iptables.Match{iptables.Comment(sp.spn + " external IP"), sp.portMatch}}
		c := sp.natC(sp.r.chains.Services())
		if len(sp.extEps) > 0 {
			rule.Target = iptables.Jump(sp.ext)
		} else {
			c, rule.Target = sp.filC(sp.r.chains.ExternalServices()), sp.extVerdict
			rule.Matches[0] = iptables.Comment(sp.spn + " has no local endpoints")
		}
		if err := sp.place(c, rule); err != nil {
			return err
		}
	}
	return nil
}

// nodePortRule does for the node port what externalIPRules does for
// external IPs.
func (sp *servicePort) nodePortRule() error {
	if !sp.servesNodePort() {
		return nil
	}
	npMatch := iptables.Ports{Dst: iptables.Port(sp.p.NodePort)}
	if len(sp.extEps) > 0 {
		return sp.place(sp.natC(sp.r.chains.NodePorts()), iptables.Rule{Protocol: sp.np, Matches: []iptables.Match{sp.comment, npMatch}, Target: iptables.Jump(sp.ext)})
	}
	return sp.place(sp.filC(sp.r.chains.ExternalServices()), iptables.Rule{Protocol: sp.np,
		Matches: []iptables.Match{iptables.Comment(sp.spn + " has no local endpoints"), iptables.DstLocal, npMatch}, Target: sp.extVerdict})
}

// udp returns what conntrack cleanup needs to know of this port.
func (sp *servicePort) udp() udpPort {
	u := udpPort{fam: sp.f, port: sp.p.Port}
	if sp.nodePorts {
		u.nodePort = sp.p.NodePort
	}
	if sp.cip.IsValid() {
		u.ips = append(u.ips, sp.cip)
	}
	u.ips = append(u.ips, sp.eips...)
	for _, c := range slices.Concat(sp.svcEps, sp.svlEps) {
		if !slices.Contains(u.eps, c.ap.Addr()) {
			u.eps = append(u.eps, c.ap.Addr())
		}
	}
	return u
}
