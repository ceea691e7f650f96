package service

import (
	"net/netip"
	"slices"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
)

// renderer turns a Service into rules for one proxy configuration.
type renderer struct {
	chains   Chains
	families []podnet.Family
	cidr     map[podnet.Family]netip.Prefix // cluster CIDR per family
	// serviceCIDRs are where cluster IPs are allocated from.
	serviceCIDRs []netip.Prefix
	// nodePortAddrs serve node ports; nil: every local address but
	// loopback.
	nodePortAddrs []netip.Addr
	nodeIPs       map[podnet.Family]netip.Addr // Config.NodeIPs
	node          string
	zone          string // the node's topology.kubernetes.io/zone; see Proxy.SetZone
	mark          uint32
}

// nodePortAddrsOf returns the node-port addresses of family f.
func (r *renderer) nodePortAddrsOf(f podnet.Family) []netip.Addr {
	var out []netip.Addr
	for _, a := range r.nodePortAddrs {
		if podnet.FamilyOf(a) == f {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// loopback is the loopback network of family f.
func loopback(f podnet.Family) netip.Prefix {
	if f == podnet.IPv6 {
		return netip.MustParsePrefix("::1/128")
	}
	return netip.MustParsePrefix("127.0.0.0/8")
}

// udpPort is what conntrack cleanup needs to know of one UDP port.
type udpPort struct {
	fam      podnet.Family
	ips      []netip.Addr // cluster and external IPs
	port     uint16
	nodePort uint16
	eps      []netip.AddrPort // endpoints traffic may be sent to
}

type epChoice struct {
	ap    netip.AddrPort
	chain string
}

// pick returns the endpoints that take new connections: the ready ones
// that ready accepts, or, when there is none, the serving terminating
// ones that terminating accepts.
func pick(eps []Endpoint, ready, terminating func(Endpoint) bool) []Endpoint {
	var r, t []Endpoint
	for _, e := range eps {
		switch {
		case e.Ready && ready(e):
			r = append(r, e)
		case e.Serving && e.Terminating && terminating(e):
			t = append(t, e)
		}
	}
	if len(r) > 0 {
		return r
	}
	return t
}

// clusterEndpoints returns the endpoints that take new connections under
// the Cluster policy: the ready ones the topology hints leave this node,
// or, when none is ready, the serving terminating ones (hints aside).
func (r *renderer) clusterEndpoints(eps []Endpoint) []Endpoint {
	return pick(eps, r.topology(eps), func(Endpoint) bool { return true })
}

// topology returns which ready endpoints the hints give this node, as
// kube-proxy decides: when every ready endpoint has a node hint and one
// names this node, those naming it (PreferSameNode); else when every
// ready endpoint has a zone hint and one names this node's zone, those
// naming it (PreferSameZone, PreferClose); else every endpoint.
func (r *renderer) topology(eps []Endpoint) func(Endpoint) bool {
	allNode, allZone, forNode, forZone, any := true, true, false, false, false
	for _, e := range eps {
		if !e.Ready {
			continue
		}
		any = true
		allNode = allNode && len(e.NodeHints) > 0
		allZone = allZone && len(e.ZoneHints) > 0
		forNode = forNode || r.node != "" && slices.Contains(e.NodeHints, r.node)
		forZone = forZone || r.zone != "" && slices.Contains(e.ZoneHints, r.zone)
	}
	switch {
	case any && allNode && forNode:
		return func(e Endpoint) bool { return slices.Contains(e.NodeHints, r.node) }
	case any && allZone && forZone:
		return func(e Endpoint) bool { return slices.Contains(e.ZoneHints, r.zone) }
	}
	return func(Endpoint) bool { return true }
}

// familyService is a Service as one family sees it.
type familyService struct {
	r    *renderer
	s    *Service
	f    podnet.Family
	aff  uint32       // ClientIP affinity timeout, 0 without affinity
	cip  netip.Addr   // cluster IP; invalid when s has none in f
	eips []netip.Addr // external and load-balancer IPs
	// fwIPs are the load-balancer IPs that only sources in ranges may
	// use (loadBalancerSourceRanges of this family).
	fwIPs     []netip.Addr
	ranges    []netip.Prefix
	nodePorts bool // node ports are served in f
	// Endpoints that take new connections: all of them, and those on
	// this node.
	svcSel, svlSel     []Endpoint
	intLocal, extLocal bool // traffic policies are Local
	cidr               netip.Prefix
	hasCIDR            bool
}

// family returns the part of s in family f, or nil when s has nothing to
// render there.
func (r *renderer) family(s *Service, f podnet.Family, aff uint32) *familyService {
	fs := &familyService{r: r, s: s, f: f, aff: aff}
	for _, ip := range s.ClusterIPs {
		if podnet.FamilyOf(ip) == f {
			fs.cip = ip.Unmap()
		}
	}
	for _, ip := range s.externalIPs() {
		if podnet.FamilyOf(ip) == f {
			fs.eips = append(fs.eips, ip.Unmap())
		}
	}
	if len(s.LoadBalancerSourceRanges) > 0 {
		for _, ip := range s.LoadBalancerIPs {
			if podnet.FamilyOf(ip) == f {
				fs.fwIPs = append(fs.fwIPs, ip.Unmap())
			}
		}
		fromNode := false
		for _, pr := range s.LoadBalancerSourceRanges {
			if podnet.FamilyOf(pr.Addr()) == f {
				fs.ranges = append(fs.ranges, pr.Masked())
				fromNode = fromNode || pr.Contains(r.nodeIPs[f])
			}
		}
		// kube-proxy's allowFromNode: a node that holds a load-balancer
		// IP as a local address reaches it from that address.
		if fromNode {
			for _, ip := range fs.fwIPs {
				fs.ranges = append(fs.ranges, netip.PrefixFrom(ip, ip.BitLen()))
			}
		}
		fs.ranges = outermost(fs.ranges)
	}
	var eps []Endpoint
	for _, e := range s.Endpoints {
		if podnet.FamilyOf(e.Addr) == f {
			eps = append(eps, e)
		}
	}
	fs.nodePorts = s.hasNodePort() && (fs.cip.IsValid() || len(s.ClusterIPs) == 0 && len(eps) > 0)
	if !fs.cip.IsValid() && len(fs.eips) == 0 && !fs.nodePorts {
		return nil
	}
	fs.svcSel = r.clusterEndpoints(eps)
	local := func(e Endpoint) bool { return r.node != "" && e.NodeName == r.node }
	fs.svlSel = pick(eps, local, local)
	slices.SortFunc(fs.svcSel, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
	slices.SortFunc(fs.svlSel, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
	fs.intLocal = s.InternalTrafficPolicy == PolicyLocal
	fs.extLocal = s.ExternalTrafficPolicy == PolicyLocal
	fs.cidr, fs.hasCIDR = r.cidr[f]
	return fs
}

// outermost returns the prefixes of ps that no other prefix of ps
// contains, sorted, each once: they cover the same addresses without
// overlapping (two prefixes either nest or are disjoint), as an nftables
// interval set requires of its elements.
func outermost(ps []netip.Prefix) []netip.Prefix {
	sorted := slices.Clone(ps)
	slices.SortFunc(sorted, func(a, b netip.Prefix) int { return a.Bits() - b.Bits() })
	var out []netip.Prefix
	for _, p := range sorted {
		if !slices.ContainsFunc(out, func(o netip.Prefix) bool { return o.Contains(p.Addr()) }) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
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

// servesNodePort reports whether this port has a node port in this family.
func (sp *servicePort) servesNodePort() bool { return sp.nodePorts && sp.p.NodePort != 0 }

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
		if !slices.Contains(u.eps, c.ap) {
			u.eps = append(u.eps, c.ap)
		}
	}
	return u
}
