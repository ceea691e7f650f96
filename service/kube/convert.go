package kube

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/service"
)

// Labels that take a Service away from this proxy, as from kube-proxy:
// another proxy implements it, or it is headless.
const (
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelHeadless         = "service.kubernetes.io/headless"
)

// Convert returns the proxy's model of svc with the endpoints of eps (the
// Service's EndpointSlices), keeping the addresses of families (nil means
// both). ok is false when the Service gets no rules: headless,
// ExternalName, labelled for another proxy (LabelServiceProxyName) or
// headless (LabelHeadless), or no cluster IP of families. Endpoints keep
// their slices' topology hints. An address that does not
// parse is an error matching ErrInvalid; the result is not validated
// (Proxy.Update does that).
func Convert(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, families []podnet.Family) (s service.Service, ok bool, err error) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return s, false, nil
	}
	if _, other := svc.Labels[LabelServiceProxyName]; other {
		return s, false, nil
	}
	if _, headless := svc.Labels[LabelHeadless]; headless {
		return s, false, nil
	}
	name := service.Name{Namespace: svc.Namespace, Name: svc.Name}
	bad := func(format string, a ...any) error {
		return podnet.Invalid("service %q: %s", name.String(), fmt.Sprintf(format, a...))
	}
	keep := func(a netip.Addr) bool { return families == nil || slices.Contains(families, podnet.FamilyOf(a)) }
	s = service.Service{
		Name:                  name,
		Affinity:              service.Affinity(svc.Spec.SessionAffinity),
		ExternalTrafficPolicy: service.TrafficPolicy(svc.Spec.ExternalTrafficPolicy),
		InternalTrafficPolicy: service.TrafficPolicy(deref(svc.Spec.InternalTrafficPolicy)),
	}
	if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		if *c.ClientIP.TimeoutSeconds < 0 {
			return s, false, bad("negative session affinity timeout")
		}
		s.AffinitySeconds = uint32(*c.ClientIP.TimeoutSeconds)
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 && svc.Spec.ClusterIP != "" {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	had := len(clusterIPs) > 0
	if s.ClusterIPs, err = parseAddrs(clusterIPs, keep); err != nil {
		return s, false, bad("cluster IP %v", err)
	}
	if s.ExternalIPs, err = parseAddrs(svc.Spec.ExternalIPs, keep); err != nil {
		return s, false, bad("external IP %v", err)
	}
	if err = loadBalancer(svc, keep, &s); err != nil {
		return s, false, bad("%v", err)
	}
	if had && len(s.ClusterIPs) == 0 {
		return s, false, nil // a Service of another family
	}
	if s.Ports, err = ports(svc.Spec.Ports); err != nil {
		return s, false, bad("%v", err)
	}
	ipFamilies := map[podnet.Family]bool{}
	for _, a := range s.ClusterIPs {
		ipFamilies[podnet.FamilyOf(a)] = true
	}
	if s.Endpoints, err = endpoints(eps, func(a netip.Addr) bool { return ipFamilies[podnet.FamilyOf(a)] }); err != nil {
		return s, false, bad("%v", err)
	}
	return s, true, nil
}

// loadBalancer fills in the load balancer's ingress IPs that reach the
// node unchanged (ipMode VIP or unset; kube-proxy leaves ipMode Proxy to
// the load balancer), the source ranges and the health-check node port,
// for a LoadBalancer Service.
func loadBalancer(svc *corev1.Service, keep func(netip.Addr) bool, s *service.Service) error {
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return nil
	}
	if hc := svc.Spec.HealthCheckNodePort; hc > 0 && hc <= 65535 {
		s.HealthCheckNodePort = uint16(hc)
	}
	var ips []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if in.IP != "" && (in.IPMode == nil || *in.IPMode == corev1.LoadBalancerIPModeVIP) {
			ips = append(ips, in.IP)
		}
	}
	lbIPs, err := parseAddrs(ips, keep)
	if err != nil {
		return fmt.Errorf("load-balancer ingress IP %v", err)
	}
	for _, a := range lbIPs { // an address listed twice is served once
		if !slices.Contains(s.ClusterIPs, a) && !slices.Contains(s.ExternalIPs, a) && !slices.Contains(s.LoadBalancerIPs, a) {
			s.LoadBalancerIPs = append(s.LoadBalancerIPs, a)
		}
	}
	for _, r := range svc.Spec.LoadBalancerSourceRanges {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil {
			return fmt.Errorf("load-balancer source range %q: %v", r, err)
		}
		s.LoadBalancerSourceRanges = append(s.LoadBalancerSourceRanges, p)
	}
	return nil
}

func parseAddrs(in []string, keep func(netip.Addr) bool) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, ip := range in {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", ip, err)
		}
		if keep(a) {
			out = append(out, a)
		}
	}
	return out, nil
}

func ports(in []corev1.ServicePort) ([]service.Port, error) {
	var out []service.Port
	for _, p := range in {
		// Port 0 and the like are left to Validate, whose message is clearer.
		if p.Port < 0 || p.Port > 65535 || p.NodePort < 0 || p.NodePort > 65535 {
			return nil, fmt.Errorf("port %q: out of range", p.Name)
		}
		port := service.Port{Name: p.Name, Protocol: service.Protocol(p.Protocol), Port: uint16(p.Port), NodePort: uint16(p.NodePort)}
		if v := p.TargetPort.IntValue(); v > 0 && v <= 65535 && p.TargetPort.StrVal == "" {
			port.TargetPort = uint16(v)
		}
		out = append(out, port)
	}
	return out, nil
}

// endpoints merges the slices' endpoints, in the order of the slices'
// names, keeping those whose address keep accepts. An address listed
// twice is one endpoint with the ports of both entries.
func endpoints(eps []*discoveryv1.EndpointSlice, keep func(netip.Addr) bool) ([]service.Endpoint, error) {
	eps = slices.Clone(eps)
	slices.SortFunc(eps, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	var out []service.Endpoint
	at := map[netip.Addr]int{}
	for _, es := range eps {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports := map[string]uint16{}
		for _, p := range es.Ports {
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				return nil, fmt.Errorf("EndpointSlice %q: port %q: missing or out of range", es.Name, deref(p.Name))
			}
			ports[deref(p.Name)] = uint16(*p.Port)
		}
		for _, e := range es.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				return nil, fmt.Errorf("EndpointSlice %q: endpoint address %q: %w", es.Name, e.Addresses[0], err)
			}
			if !keep(a) {
				continue
			}
			ep := endpoint(a, e, ports)
			if i, dup := at[a]; dup {
				out[i] = merge(out[i], ep)
				continue
			}
			at[a] = len(out)
			out = append(out, ep)
		}
	}
	return out, nil
}

func endpoint(a netip.Addr, e discoveryv1.Endpoint, ports map[string]uint16) service.Endpoint {
	ready := e.Conditions.Ready == nil || *e.Conditions.Ready
	serving := e.Conditions.Serving == nil || *e.Conditions.Serving
	out := service.Endpoint{
		Addr: a, Ports: ports, NodeName: deref(e.NodeName),
		Ready: ready, Serving: serving, Terminating: deref(e.Conditions.Terminating),
	}
	if h := e.Hints; h != nil {
		for _, z := range h.ForZones {
			out.ZoneHints = append(out.ZoneHints, z.Name)
		}
		for _, n := range h.ForNodes {
			out.NodeHints = append(out.NodeHints, n.Name)
		}
	}
	return out
}

// merge joins two entries for one address: the conditions of the ready
// one (else the first), the ports of both (the first's on a clash).
func merge(first, second service.Endpoint) service.Endpoint {
	out := first
	if second.Ready && !first.Ready {
		out = second
	}
	out.Ports = map[string]uint16{}
	for _, m := range []map[string]uint16{second.Ports, first.Ports} {
		for k, v := range m {
			out.Ports[k] = v
		}
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
