package kube

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/service"
)

func ptr[T any](v T) *T { return &v }

func svcObj(ips ...string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{
			ClusterIP: ips[0], ClusterIPs: ips,
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
}

type epSpec struct {
	addr                        string
	ready, serving, terminating *bool
	node                        string
}

func slice(name string, typ discoveryv1.AddressType, port int32, eps ...epSpec) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: typ,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(port)}},
	}
	for _, e := range eps {
		ep := discoveryv1.Endpoint{Addresses: []string{e.addr}, Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating}}
		if e.node != "" {
			ep.NodeName = ptr(e.node)
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
	return es
}

func addrs(eps []service.Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.Addr.String())
	}
	return out
}

func TestConvertMergesSlices(t *testing.T) {
	a := slice("web-a", discoveryv1.AddressTypeIPv4, 8080, epSpec{addr: "10.200.0.2", node: "node0"}, epSpec{addr: "10.200.1.2", ready: ptr(false), serving: ptr(true), terminating: ptr(true)})
	b := slice("web-b", discoveryv1.AddressTypeIPv4, 8080, epSpec{addr: "10.200.1.2"}, epSpec{addr: "10.200.2.2", ready: ptr(false)})
	s, ok, err := Convert(svcObj("10.96.0.20"), []*discoveryv1.EndpointSlice{b, a}, nil)
	if err != nil || !ok {
		t.Fatalf("Convert: %v %v", ok, err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	got := addrs(s.Endpoints)
	if want := []string{"10.200.0.2", "10.200.1.2", "10.200.2.2"}; len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("endpoints %v, want %v (slices in name order, a duplicate once)", got, want)
	}
	e0, e1, e2 := s.Endpoints[0], s.Endpoints[1], s.Endpoints[2]
	if !e0.Ready || !e0.Serving || e0.Terminating || e0.NodeName != "node0" || e0.Ports["http"] != 8080 {
		t.Errorf("unset conditions: %+v, want ready, serving, not terminating", e0)
	}
	if !e1.Ready || e1.Terminating {
		t.Errorf("duplicate: %+v, want the ready entry of web-b", e1)
	}
	// kube-proxy v1.34 reads an unset serving as true whatever ready
	// says (pkg/proxy/endpointslicecache.go); it matters only for a
	// terminating endpoint, the fallback when none is ready.
	if e2.Ready || !e2.Serving {
		t.Errorf("ready=false with serving unset: %+v, want not ready, serving", e2)
	}
}

func TestConvertFamilies(t *testing.T) {
	v4 := slice("web-v4", discoveryv1.AddressTypeIPv4, 8080, epSpec{addr: "10.200.0.2"})
	v6 := slice("web-v6", discoveryv1.AddressTypeIPv6, 8080, epSpec{addr: "fd00:200::2"})
	fqdn := slice("web-fqdn", discoveryv1.AddressTypeFQDN, 8080, epSpec{addr: "example.test"})
	dual := svcObj("10.96.0.20", "fd00:96::20")
	for _, c := range []struct {
		name      string
		svc       *corev1.Service
		fams      []podnet.Family
		ok        bool
		ips, eps  int
		wantFirst string
	}{
		{"dual-stack on a dual-stack proxy", dual, nil, true, 2, 2, "10.200.0.2"},
		{"dual-stack on an IPv4 proxy", dual, []podnet.Family{podnet.IPv4}, true, 1, 1, "10.200.0.2"},
		{"IPv6 Service on an IPv4 proxy", svcObj("fd00:96::20"), []podnet.Family{podnet.IPv4}, false, 0, 0, ""},
		{"IPv4 Service with an IPv6 slice", svcObj("10.96.0.20"), nil, true, 1, 1, "10.200.0.2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, ok, err := Convert(c.svc, []*discoveryv1.EndpointSlice{v6, fqdn, v4}, c.fams)
			if err != nil || ok != c.ok {
				t.Fatalf("Convert: ok=%v err=%v, want ok=%v", ok, err, c.ok)
			}
			if !ok {
				return
			}
			if len(s.ClusterIPs) != c.ips || len(s.Endpoints) != c.eps || s.Endpoints[0].Addr != netip.MustParseAddr(c.wantFirst) {
				t.Fatalf("cluster IPs %v endpoints %v", s.ClusterIPs, addrs(s.Endpoints))
			}
		})
	}
}

func TestConvertSkipsAndRejects(t *testing.T) {
	headless := svcObj("None")
	ext := svcObj("10.96.0.20")
	ext.Spec.Type = corev1.ServiceTypeExternalName
	other := svcObj("10.96.0.21")
	other.Labels = map[string]string{LabelServiceProxyName: "foo-bar"}
	labelledHeadless := svcObj("10.96.0.22")
	labelledHeadless.Labels = map[string]string{LabelHeadless: ""}
	for _, svc := range []*corev1.Service{headless, ext, other, labelledHeadless} {
		if _, ok, err := Convert(svc, nil, nil); ok || err != nil {
			t.Errorf("%s: ok=%v err=%v, want no rules and no error", svc.Spec.ClusterIP, ok, err)
		}
	}
	bad := svcObj("10.96.0.300")
	if _, _, err := Convert(bad, nil, nil); !errors.Is(err, podnet.ErrInvalid) {
		t.Errorf("bad cluster IP: %v, want ErrInvalid", err)
	}
	badSlice := slice("web-x", discoveryv1.AddressTypeIPv4, 0, epSpec{addr: "10.200.0.2"})
	if _, _, err := Convert(svcObj("10.96.0.20"), []*discoveryv1.EndpointSlice{badSlice}, nil); !errors.Is(err, podnet.ErrInvalid) {
		t.Errorf("slice port 0: %v, want ErrInvalid", err)
	}
}

// TestConvertHints: an endpoint's forZones and forNodes hints reach the
// model.
func TestConvertHints(t *testing.T) {
	es := slice("web-a", discoveryv1.AddressTypeIPv4, 8080, epSpec{addr: "10.200.0.2"}, epSpec{addr: "10.200.1.2"})
	es.Endpoints[0].Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}, ForNodes: []discoveryv1.ForNode{{Name: "node0"}}}
	s, ok, err := Convert(svcObj("10.96.0.20"), []*discoveryv1.EndpointSlice{es}, nil)
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	if e := s.Endpoints[0]; !slices.Equal(e.ZoneHints, []string{"zone-a"}) || !slices.Equal(e.NodeHints, []string{"node0"}) {
		t.Errorf("hinted endpoint: %+v", e)
	}
	if e := s.Endpoints[1]; e.ZoneHints != nil || e.NodeHints != nil {
		t.Errorf("endpoint without hints: %+v", e)
	}
}

// TestConvertLoadBalancer: ingress IPs with ipMode VIP (or none) are
// served, ipMode Proxy ones are the load balancer's business, an address
// that is already an external IP is not listed twice, and the source
// ranges are kept.
func TestConvertLoadBalancer(t *testing.T) {
	svc := svcObj("10.96.0.20")
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.ExternalIPs = []string{"203.0.113.9"}
	svc.Spec.LoadBalancerSourceRanges = []string{"192.0.2.0/24", " 198.51.100.0/24"}
	svc.Spec.HealthCheckNodePort = 32100
	vip, proxy := corev1.LoadBalancerIPModeVIP, corev1.LoadBalancerIPModeProxy
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
		{IP: "203.0.113.7"}, {IP: "203.0.113.8", IPMode: &vip}, {IP: "203.0.113.10", IPMode: &proxy},
		{IP: "203.0.113.9"}, {Hostname: "lb.example.com"},
	}
	s, ok, err := Convert(svc, nil, nil)
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	if want := []netip.Addr{netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("203.0.113.8")}; !slices.Equal(s.LoadBalancerIPs, want) {
		t.Errorf("load-balancer IPs %v, want %v", s.LoadBalancerIPs, want)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.0/24")}; !slices.Equal(s.LoadBalancerSourceRanges, want) {
		t.Errorf("source ranges %v, want %v", s.LoadBalancerSourceRanges, want)
	}
	if s.HealthCheckNodePort != 32100 {
		t.Errorf("health-check node port %d, want 32100", s.HealthCheckNodePort)
	}
	if err := s.Validate(); err != nil {
		t.Errorf("converted Service does not validate: %v", err)
	}
	svc.Spec.Type = corev1.ServiceTypeClusterIP
	if s, _, _ := Convert(svc, nil, nil); s.LoadBalancerIPs != nil {
		t.Errorf("a ClusterIP Service's stale status served: %v", s.LoadBalancerIPs)
	}
}
