package kube

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/policy"
)

// TestConvertPolicy: policyTypes default as the API documents, rules of
// a direction not isolated are dropped, ports keep number, name, range
// and protocol, selectors keep nil apart from empty.
func TestConvertPolicy(t *testing.T) {
	udp, http, p80 := corev1.ProtocolUDP, intstr.FromString("http"), intstr.FromInt32(80)
	end := int32(90)
	meta := metav1.ObjectMeta{Namespace: "x", Name: "p"}
	egress := []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16"}}}}}}
	cases := []struct {
		name string
		spec networkingv1.NetworkPolicySpec
		want policy.Policy
	}{
		{"no types, no rules: deny ingress", networkingv1.NetworkPolicySpec{},
			policy.Policy{Types: policy.Ingress}},
		{"no types, egress rules: both", networkingv1.NetworkPolicySpec{Egress: egress},
			policy.Policy{Types: policy.Ingress | policy.Egress, Egress: []policy.Rule{{Peers: []policy.Peer{{IPBlock: &policy.IPBlock{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}}}}}}},
		{"egress rules without Egress type dropped", networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}, Egress: egress},
			policy.Policy{Types: policy.Ingress}},
		{"ports and selectors", networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &http}, {Protocol: &udp, Port: &p80, EndPort: &end}, {Protocol: &udp}},
			}}},
			policy.Policy{Types: policy.Ingress, Ingress: []policy.Rule{{
				Peers: []policy.Peer{{Namespaces: &policy.Selector{}}},
				Ports: []policy.Port{{Protocol: policy.TCP, Name: "http"}, {Protocol: policy.UDP, Port: 80, EndPort: 90}, {Protocol: policy.UDP}},
			}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConvertPolicy(&networkingv1.NetworkPolicy{ObjectMeta: meta, Spec: tc.spec})
			if err != nil {
				t.Fatal(err)
			}
			tc.want.Name = policy.Name{Namespace: "x", Name: "p"}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if err := got.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
	_, err := ConvertPolicy(&networkingv1.NetworkPolicy{ObjectMeta: meta, Spec: networkingv1.NetworkPolicySpec{
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/33"}}}}}}})
	if !errors.Is(err, policy.ErrInvalid) {
		t.Errorf("bad CIDR: %v, want ErrInvalid", err)
	}
}

// TestConvertPod: host-network and ended pods are left out; the local
// flag follows the node; named container ports are kept.
func TestConvertPod(t *testing.T) {
	p := pod("web", "node0", "10.244.0.5", map[string]string{"app": "web"}, corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, corev1.ContainerPort{ContainerPort: 9090})
	p.Namespace = "x"
	got, ok, err := ConvertPod(p, "node0")
	want := policy.Pod{Name: policy.Name{Namespace: "x", Name: "web"}, Labels: map[string]string{"app": "web"}, IPs: []netip.Addr{netip.MustParseAddr("10.244.0.5")},
		Ports: []policy.ContainerPort{{Name: "http", Protocol: policy.TCP, Port: 8080}}, Local: true}
	if err != nil || !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v %v %v\nwant %+v", got, ok, err, want)
	}
	if got, _, _ := ConvertPod(p, "node1"); got.Local {
		t.Error("a pod of node0 is local on node1")
	}
	p.Spec.HostNetwork = true
	if _, ok, _ := ConvertPod(p, "node0"); ok {
		t.Error("host-network pod kept")
	}
	p.Spec.HostNetwork, p.Status.Phase = false, corev1.PodSucceeded
	if _, ok, _ := ConvertPod(p, "node0"); ok {
		t.Error("ended pod kept")
	}
}
