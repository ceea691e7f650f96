package service

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
)

// Re-exported sentinels; see package podnet.
var (
	ErrInvalid  = podnet.ErrInvalid
	ErrNotFound = podnet.ErrNotFound
)

// Protocol is a Service port's protocol, spelled as Kubernetes spells it.
type Protocol string

// The protocols a Service port may use.
const (
	TCP  Protocol = "TCP"  // iptables -p tcp
	UDP  Protocol = "UDP"  // iptables -p udp
	SCTP Protocol = "SCTP" // iptables -p sctp
)

func (p Protocol) rule() iptables.Protocol { return iptables.Protocol(strings.ToLower(string(p))) }

// Affinity is a Service's session affinity.
type Affinity string

// Session affinities.
const (
	AffinityNone     Affinity = "None"     // spread every connection at random; "" means None
	AffinityClientIP Affinity = "ClientIP" // iptables -m recent per endpoint
)

// DefaultAffinitySeconds is Kubernetes' default ClientIP affinity timeout
// (3 hours).
const DefaultAffinitySeconds = 10800

// TrafficPolicy says which endpoints serve a class of traffic.
type TrafficPolicy string

// Traffic policies.
const (
	// PolicyCluster uses endpoints on every node; external traffic is
	// masqueraded so replies come back through this node. "" means
	// Cluster.
	PolicyCluster TrafficPolicy = "Cluster"
	// PolicyLocal uses only endpoints on this node and keeps the client's
	// source address.
	PolicyLocal TrafficPolicy = "Local"
)

// Name identifies a Service: its namespace and name.
type Name struct {
	Namespace, Name string
}

// String returns "namespace/name", as kube-proxy names a Service in rule
// comments.
func (n Name) String() string { return n.Namespace + "/" + n.Name }

// before reports whether n sorts before o: by namespace, then name.
func (n Name) before(o Name) bool {
	if n.Namespace != o.Namespace {
		return n.Namespace < o.Namespace
	}
	return n.Name < o.Name
}

// Port is one port of a Service.
type Port struct {
	Name     string   // required when the Service has more than one port
	Protocol Protocol // "" means TCP
	Port     uint16   // required: the port on the cluster and external IPs
	// TargetPort is the endpoints' port when an Endpoint does not list
	// one for this port name; 0 means Port.
	TargetPort uint16
	NodePort   uint16 // 0: none; else served on every local address
}

func (p Port) protocol() Protocol {
	if p.Protocol == "" {
		return TCP
	}
	return p.Protocol
}

// Endpoint is one backend of a Service, as an EndpointSlice lists it.
type Endpoint struct {
	Addr netip.Addr
	// Ports maps a Service port name to the endpoint's port; a missing
	// name uses the Service port's TargetPort.
	Ports map[string]uint16
	// Ready endpoints take new connections, Terminating or not (the
	// EndpointSlice controller marks a terminating pod Ready only for a
	// Service with publishNotReadyAddresses). Serving and Terminating
	// endpoints that are not Ready take them only when no endpoint of the
	// port is Ready. As kube-proxy reads the conditions.
	Ready, Serving, Terminating bool
	NodeName                    string // the node it runs on; compared with Config.NodeName
	// ZoneHints and NodeHints are the EndpointSlice's hints (forZones,
	// forNodes), set by Kubernetes for a Service with a
	// trafficDistribution: the zones and nodes that should prefer this
	// endpoint. See the package documentation, Topology.
	ZoneHints, NodeHints []string
}

// Service is a Kubernetes Service with its endpoints: what the proxy turns
// into rules.
type Service struct {
	Name
	ClusterIPs  []netip.Addr // usually one; one per family at most
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are the load balancer's ingress IPs that reach the
	// node unchanged (status.loadBalancer.ingress with ipMode VIP, the
	// default): served as external IPs are, under the external policy.
	LoadBalancerIPs []netip.Addr
	// LoadBalancerSourceRanges limit which sources may use the
	// load-balancer IPs: new connections from elsewhere (pods and the
	// node included) are dropped. Empty: every source.
	LoadBalancerSourceRanges []netip.Prefix
	// HealthCheckNodePort, for a Service with an external policy Local,
	// is the port on which a proxy with Config.ServeHealthChecks tells
	// load balancers whether this node has a ready endpoint; 0: none.
	HealthCheckNodePort uint16
	Ports               []Port
	Affinity            Affinity
	// AffinitySeconds is the ClientIP affinity timeout; 0 means
	// DefaultAffinitySeconds.
	AffinitySeconds       uint32
	ExternalTrafficPolicy TrafficPolicy // for NodePorts and external IPs
	InternalTrafficPolicy TrafficPolicy // for cluster IPs
	Endpoints             []Endpoint
}

// Validate reports the first problem with s as an error matching
// ErrInvalid that names the Service and the field.
func (s *Service) Validate() error {
	if s.Namespace == "" || s.Name.Name == "" {
		return podnet.Invalid("service %q: namespace and name are required", s.Name.String())
	}
	bad := func(format string, a ...any) error {
		return podnet.Invalid("service %q: %s", s.Name.String(), fmt.Sprintf(format, a...))
	}
	if strings.ContainsAny(s.Namespace+s.Name.Name, "/: \"'\\\n") {
		return bad("namespace or name contains '/', ':', a space or a quote")
	}
	if len(s.ClusterIPs) == 0 && len(s.ExternalIPs) == 0 && len(s.LoadBalancerIPs) == 0 && !s.hasNodePort() {
		return bad("no cluster IP, external IP or node port")
	}
	for _, check := range []func(func(string, ...any) error) error{s.validateIPs, s.validatePolicies, s.validatePorts, s.validateEndpoints} {
		if err := check(bad); err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) validateIPs(bad func(string, ...any) error) error {
	fams := map[podnet.Family]bool{}
	for _, ip := range s.ClusterIPs {
		if !ip.IsValid() || ip.IsUnspecified() || ip.Zone() != "" {
			return bad("cluster IP %q is not a unicast address", ip)
		}
		f := podnet.FamilyOf(ip)
		if fams[f] {
			return bad("two %v cluster IPs", f)
		}
		fams[f] = true
	}
	for _, ip := range s.ExternalIPs {
		if !ip.IsValid() || ip.IsUnspecified() || ip.Zone() != "" {
			return bad("external IP %q is not a unicast address", ip)
		}
		if slices.Contains(s.ClusterIPs, ip) {
			return bad("external IP %s is also a cluster IP", ip)
		}
	}
	for _, ip := range s.LoadBalancerIPs {
		if !ip.IsValid() || ip.IsUnspecified() || ip.Zone() != "" {
			return bad("load-balancer IP %q is not a unicast address", ip)
		}
		if slices.Contains(s.ClusterIPs, ip) || slices.Contains(s.ExternalIPs, ip) {
			return bad("load-balancer IP %s is also a cluster or external IP", ip)
		}
	}
	for _, r := range s.LoadBalancerSourceRanges {
		if !r.IsValid() {
			return bad("load-balancer source range %q is not a prefix", r)
		}
	}
	return nil
}

func (s *Service) validatePolicies(bad func(string, ...any) error) error {
	switch s.Affinity {
	case "", AffinityNone, AffinityClientIP:
	default:
		return bad("session affinity %q: want \"\" or %q", s.Affinity, AffinityClientIP)
	}
	if s.AffinitySeconds > 86400 {
		return bad("affinity timeout %d s: more than a day", s.AffinitySeconds)
	}
	for _, p := range []TrafficPolicy{s.ExternalTrafficPolicy, s.InternalTrafficPolicy} {
		if p != "" && p != PolicyCluster && p != PolicyLocal {
			return bad("traffic policy %q: want Cluster or Local", p)
		}
	}
	return nil
}

func (s *Service) validatePorts(bad func(string, ...any) error) error {
	if len(s.Ports) == 0 {
		return bad("no ports")
	}
	type key struct {
		proto Protocol
		port  uint16
	}
	names, ports, nodePorts := map[string]bool{}, map[key]bool{}, map[key]bool{}
	for i, p := range s.Ports {
		switch p.protocol() {
		case TCP, UDP, SCTP:
		default:
			return bad("port %d: protocol %q: want TCP, UDP or SCTP", i, p.Protocol)
		}
		if len(s.Ports) > 1 && p.Name == "" {
			return bad("port %d: a name is required when there are several ports", i)
		}
		if strings.ContainsAny(p.Name, ":/ \"'\\\n") {
			return bad("port %d: name %q contains ':', '/', a space or a quote", i, p.Name)
		}
		if names[p.Name] {
			return bad("port name %q used twice", p.Name)
		}
		names[p.Name] = true
		if p.Port == 0 {
			return bad("port %q: port 0", p.Name)
		}
		if k := (key{p.protocol(), p.Port}); ports[k] {
			return bad("port %d/%s used twice", p.Port, p.protocol())
		} else {
			ports[k] = true
		}
		if k := (key{p.protocol(), p.NodePort}); p.NodePort != 0 && nodePorts[k] {
			return bad("node port %d/%s used twice", p.NodePort, p.protocol())
		} else {
			nodePorts[k] = true
		}
	}
	return nil
}

func (s *Service) validateEndpoints(bad func(string, ...any) error) error {
	seen := map[netip.Addr]bool{}
	for i, e := range s.Endpoints {
		if !e.Addr.IsValid() || e.Addr.IsUnspecified() || e.Addr.Zone() != "" {
			return bad("endpoint %d: address %q is not a unicast address", i, e.Addr)
		}
		if seen[e.Addr] {
			return bad("endpoint %s listed twice", e.Addr)
		}
		seen[e.Addr] = true
		for name, port := range e.Ports {
			if port == 0 {
				return bad("endpoint %s: port %q is 0", e.Addr, name)
			}
		}
	}
	return nil
}

// externalIPs returns the addresses served under the external traffic
// policy: the external IPs and the load-balancer IPs.
func (s *Service) externalIPs() []netip.Addr {
	return slices.Concat(s.ExternalIPs, s.LoadBalancerIPs)
}

func (s *Service) hasNodePort() bool {
	for _, p := range s.Ports {
		if p.NodePort != 0 {
			return true
		}
	}
	return false
}

// affinitySeconds returns the ClientIP timeout, or 0 without affinity.
func (s *Service) affinitySeconds() uint32 {
	if s.Affinity != AffinityClientIP {
		return 0
	}
	if s.AffinitySeconds == 0 {
		return DefaultAffinitySeconds
	}
	return s.AffinitySeconds
}

// equal reports whether two Services produce the same rules (deep
// equality of the model).
func (s *Service) equal(o *Service) bool {
	if s.Name != o.Name || s.Affinity != o.Affinity || s.AffinitySeconds != o.AffinitySeconds || s.HealthCheckNodePort != o.HealthCheckNodePort ||
		s.ExternalTrafficPolicy != o.ExternalTrafficPolicy || s.InternalTrafficPolicy != o.InternalTrafficPolicy ||
		!slices.Equal(s.ClusterIPs, o.ClusterIPs) || !slices.Equal(s.ExternalIPs, o.ExternalIPs) ||
		!slices.Equal(s.LoadBalancerIPs, o.LoadBalancerIPs) || !slices.Equal(s.LoadBalancerSourceRanges, o.LoadBalancerSourceRanges) ||
		!slices.Equal(s.Ports, o.Ports) || len(s.Endpoints) != len(o.Endpoints) {
		return false
	}
	for i := range s.Endpoints {
		a, b := &s.Endpoints[i], &o.Endpoints[i]
		if a.Addr != b.Addr || a.Ready != b.Ready || a.Serving != b.Serving || a.Terminating != b.Terminating ||
			a.NodeName != b.NodeName || len(a.Ports) != len(b.Ports) ||
			!slices.Equal(a.ZoneHints, b.ZoneHints) || !slices.Equal(a.NodeHints, b.NodeHints) {
			return false
		}
		for k, v := range a.Ports {
			if w, ok := b.Ports[k]; !ok || w != v {
				return false
			}
		}
	}
	return true
}

// clone returns a deep copy, so later changes by the caller do not reach
// the proxy's record.
func (s *Service) clone() *Service {
	c := *s
	c.ClusterIPs = slices.Clone(s.ClusterIPs)
	c.ExternalIPs = slices.Clone(s.ExternalIPs)
	c.LoadBalancerIPs = slices.Clone(s.LoadBalancerIPs)
	c.LoadBalancerSourceRanges = slices.Clone(s.LoadBalancerSourceRanges)
	c.Ports = slices.Clone(s.Ports)
	c.Endpoints = slices.Clone(s.Endpoints)
	for i := range c.Endpoints {
		c.Endpoints[i].ZoneHints = slices.Clone(s.Endpoints[i].ZoneHints)
		c.Endpoints[i].NodeHints = slices.Clone(s.Endpoints[i].NodeHints)
		if s.Endpoints[i].Ports != nil {
			m := make(map[string]uint16, len(s.Endpoints[i].Ports))
			for k, v := range s.Endpoints[i].Ports {
				m[k] = v
			}
			c.Endpoints[i].Ports = m
		}
	}
	return &c
}
