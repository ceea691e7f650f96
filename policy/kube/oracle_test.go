package kube

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// This file is the oracle the truth tables through the API server are
// checked against: the networking.k8s.io/v1 NetworkPolicy semantics, as
// the API's doc comments state them, over the API objects themselves.
// It calls no podnet code, so that a misreading of the API in the
// conversion (policy/kube) or in the model (policy) shows as a
// difference. Selectors are matched by metav1.LabelSelectorAsSelector,
// the API's own label selector semantics.

// snapshot is the API objects the oracle decides from.
type snapshot struct {
	namespaces map[string]*corev1.Namespace // by name
	pods       []*corev1.Pod
	policies   []*networkingv1.NetworkPolicy
}

// endpoint is one side of a connection: a pod and the address it uses.
type endpoint struct {
	pod *corev1.Pod
	ip  netip.Addr
}

// allowed reports whether a new connection from src to dst on proto and
// port is allowed: "a connection needs both": the source's egress and the
// destination's ingress. A pod always reaches itself (its own address is
// local to it; the concept documentation: pods cannot block localhost
// access).
func (s *snapshot) allowed(src, dst endpoint, proto corev1.Protocol, port int32) bool {
	if src.pod.Namespace == dst.pod.Namespace && src.pod.Name == dst.pod.Name {
		return true
	}
	return s.admits(src, dst, networkingv1.PolicyTypeEgress, proto, port) &&
		s.admits(dst, src, networkingv1.PolicyTypeIngress, proto, port)
}

// admits reports whether the policies of self let traffic with peer
// through in direction dir. spec.ingress: "Traffic is allowed to a pod if
// there are no NetworkPolicies selecting the pod […] OR if the traffic
// matches at least one ingress rule across all of the NetworkPolicy
// objects whose podSelector matches the pod"; egress alike. A rule
// matches when its peers and its ports both do ("The traffic must match
// both ports and from").
func (s *snapshot) admits(self, peer endpoint, dir networkingv1.PolicyType, proto corev1.Protocol, port int32) bool {
	// Named ports are the destination pod's: self for ingress, the peer
	// for egress.
	dst := self.pod
	if dir == networkingv1.PolicyTypeEgress {
		dst = peer.pod
	}
	isolated := false
	for _, np := range s.policies {
		if np.Namespace != self.pod.Namespace || !affects(np, dir) || !matches(&np.Spec.PodSelector, self.pod.Labels) {
			continue
		}
		isolated = true
		for _, r := range rules(np, dir) {
			if s.peersMatch(np, r.peers, peer) && portsMatch(r.ports, dst, proto, port) {
				return true
			}
		}
	}
	return !isolated
}

// affects reports whether np isolates in direction dir. policyTypes: "If
// this field is not specified, it will default based on the existence of
// ingress or egress rules; policies that contain an egress section are
// assumed to affect egress, and all policies […] are assumed to affect
// ingress."
func affects(np *networkingv1.NetworkPolicy, dir networkingv1.PolicyType) bool {
	if len(np.Spec.PolicyTypes) > 0 {
		return slices.Contains(np.Spec.PolicyTypes, dir)
	}
	return dir == networkingv1.PolicyTypeIngress || len(np.Spec.Egress) > 0
}

type rule struct {
	peers []networkingv1.NetworkPolicyPeer
	ports []networkingv1.NetworkPolicyPort
}

func rules(np *networkingv1.NetworkPolicy, dir networkingv1.PolicyType) []rule {
	var out []rule
	if dir == networkingv1.PolicyTypeIngress {
		for _, r := range np.Spec.Ingress {
			out = append(out, rule{r.From, r.Ports})
		}
	} else {
		for _, r := range np.Spec.Egress {
			out = append(out, rule{r.To, r.Ports})
		}
	}
	return out
}

// peersMatch: from (to) "Items in this list are combined using a logical
// OR operation. If this field is empty or missing, this rule matches all
// sources". A peer is an ipBlock, or pods by podSelector (in the policy's
// namespace unless namespaceSelector is set), namespaceSelector (every
// pod of those namespaces), or both (the pods matching podSelector in the
// namespaces matching namespaceSelector).
func (s *snapshot) peersMatch(np *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, peer endpoint) bool {
	if len(peers) == 0 {
		return true
	}
	for _, pe := range peers {
		if pe.IPBlock != nil {
			if inBlock(pe.IPBlock, peer.ip) {
				return true
			}
			continue
		}
		inNamespace := peer.pod.Namespace == np.Namespace
		if pe.NamespaceSelector != nil {
			ns := s.namespaces[peer.pod.Namespace]
			inNamespace = ns != nil && matches(pe.NamespaceSelector, ns.Labels)
		}
		if inNamespace && (pe.PodSelector == nil || matches(pe.PodSelector, peer.pod.Labels)) {
			return true
		}
	}
	return false
}

// inBlock: the CIDR "that is allowed", except the CIDRs in except.
func inBlock(b *networkingv1.IPBlock, a netip.Addr) bool {
	if !netip.MustParsePrefix(b.CIDR).Contains(a) {
		return false
	}
	for _, e := range b.Except {
		if netip.MustParsePrefix(e).Contains(a) {
			return false
		}
	}
	return true
}

// portsMatch: ports "Each item in this list is combined using a logical
// OR. If this field is empty or missing, this rule matches all ports". A
// port's protocol defaults to TCP; "If present, only traffic on the
// specified protocol AND port will be matched"; no port matches every
// port of the protocol; endPort makes the range port..endPort inclusive; a
// named port is the destination pod's container port of that name and
// of that protocol (container ports default to TCP): the API leaves
// open whether a name resolves across protocols; kube-network-policies
// reads it so too.
func portsMatch(ports []networkingv1.NetworkPolicyPort, dst *corev1.Pod, proto corev1.Protocol, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if orTCP(p.Protocol) != proto {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.String:
			if namedPort(dst, p.Port.StrVal, proto) == port {
				return true
			}
		case p.EndPort == nil:
			if p.Port.IntVal == port {
				return true
			}
		default:
			if p.Port.IntVal <= port && port <= *p.EndPort {
				return true
			}
		}
	}
	return false
}

// namedPort returns the number of pod's container port name on proto, or
// -1.
func namedPort(pod *corev1.Pod, name string, proto corev1.Protocol) int32 {
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name && orTCP(&cp.Protocol) == proto {
				return cp.ContainerPort
			}
		}
	}
	return -1
}

func orTCP(p *corev1.Protocol) corev1.Protocol {
	if p == nil || *p == "" {
		return corev1.ProtocolTCP
	}
	return *p
}

// matches applies a label selector as the API defines it: an empty one
// matches everything.
func matches(sel *metav1.LabelSelector, l map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		panic(fmt.Sprintf("oracle: selector %v: %v", sel, err)) // the API server validated it
	}
	return s.Matches(labels.Set(l))
}

// TestOracle pins the oracle's reading of the API on small cases, each
// with the sentence of the API documentation it follows.
func TestOracle(t *testing.T) {
	mkPod := func(ns, name, ip string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "serve-80-tcp", ContainerPort: 80, Protocol: tcp}, {Name: "serve-80-udp", ContainerPort: 80, Protocol: udp}}}}},
			Status: corev1.PodStatus{PodIP: ip}}
	}
	xa, xb, ya, yb := mkPod("x", "a", "10.0.0.1"), mkPod("x", "b", "10.0.0.2"), mkPod("y", "a", "10.0.1.1"), mkPod("y", "b", "10.0.1.2")
	nsObj := func(name string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"ns": name}}}
	}
	ep := func(p *corev1.Pod) endpoint { return endpoint{p, netip.MustParseAddr(p.Status.PodIP)} }
	tcp80 := port(tcp, 80)
	tcp80.Protocol = nil
	for _, tc := range []struct {
		name     string
		policy   *networkingv1.NetworkPolicy // in namespace x
		src, dst *corev1.Pod
		proto    corev1.Protocol
		port     int32
		want     bool
	}{
		{"no policy selects the pod", nil, ya, xa, tcp, 80, true},
		{"empty ingress isolates", netpol("x", "p", nil, nil), ya, xa, tcp, 80, false},
		{"policyTypes default to Ingress only", netpol("x", "p", nil, nil), xa, ya, tcp, 80, true},
		{"an egress section makes it Egress too", withEgress(netpol("x", "p", nil, nil), peers(pods(match("pod", "b")))), xa, ya, tcp, 80, false},
		{"rules of an unlisted type are ignored", withEgress(netpol("x", "p", nil, ingressOnly), peers(pods(match("pod", "b")))), xa, ya, tcp, 80, true},
		{"a pod reaches itself", netpol("x", "p", nil, bothTypes), xa, xa, tcp, 80, true},
		{"podSelector alone: the policy's namespace", withIngress(netpol("x", "p", nil, nil), peers(pods(match("pod", "b")))), yb, xa, tcp, 80, false},
		{"podSelector alone, same namespace", withIngress(netpol("x", "p", nil, nil), peers(pods(match("pod", "b")))), xb, xa, tcp, 80, true},
		{"both selectors AND", withIngress(netpol("x", "p", nil, nil), peers(podsIn(match("ns", "y"), match("pod", "b")))), ya, xa, tcp, 80, false},
		{"two peers OR", withIngress(netpol("x", "p", nil, nil), peers(namespaces(match("ns", "y")), pods(match("pod", "b")))), ya, xa, tcp, 80, true},
		{"ipBlock except", withIngress(netpol("x", "p", nil, nil), peers(cidr("10.0.0.0/16", "10.0.1.0/24"))), ya, xa, tcp, 80, false},
		{"ipBlock", withIngress(netpol("x", "p", nil, nil), peers(cidr("10.0.0.0/16", "10.0.1.0/24"))), xb, xa, tcp, 80, true},
		{"ports without protocol are TCP", withIngress(netpol("x", "p", nil, nil), nil, tcp80), ya, xa, udp, 80, false},
		{"endPort is inclusive", withIngress(netpol("x", "p", nil, nil), nil, portRange(udp, 79, 80)), ya, xa, udp, 80, true},
		{"a named port needs its protocol", withIngress(netpol("x", "p", nil, nil), nil, named("", "serve-80-udp")), ya, xa, tcp, 80, false},
		{"a named port egress is the peer's", withEgress(netpol("x", "p", nil, egressOnly), nil, named(udp, "serve-80-udp")), xa, ya, udp, 80, true},
		{"peers and ports must both match", withIngress(netpol("x", "p", nil, nil), peers(pods(match("pod", "b"))), port(tcp, 81)), xb, xa, tcp, 80, false},
	} {
		s := &snapshot{namespaces: map[string]*corev1.Namespace{"x": nsObj("x"), "y": nsObj("y")}, pods: []*corev1.Pod{xa, xb, ya, yb}}
		if tc.policy != nil {
			s.policies = append(s.policies, tc.policy)
		}
		if got := s.allowed(ep(tc.src), ep(tc.dst), tc.proto, tc.port); got != tc.want {
			t.Errorf("%s: %s/%s -> %s/%s %s/%d allowed = %v, want %v", tc.name, tc.src.Namespace, tc.src.Name, tc.dst.Namespace, tc.dst.Name, tc.proto, tc.port, got, tc.want)
		}
	}
}
