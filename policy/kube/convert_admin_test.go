package kube

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	anpv1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"

	"github.com/podnet/podnet/policy"
)

// TestConvertAdminPolicy: subjects and peers of each kind, ports as
// number, range (protocol defaulting to TCP) and name (in every
// protocol, as the API's namedPort names none), networks parsed, a
// domain-names-only peer and its rule dropped, rule names and order
// kept.
func TestConvertAdminPolicy(t *testing.T) {
	web := "web"
	ports := []anpv1alpha1.AdminNetworkPolicyPort{
		{PortNumber: &anpv1alpha1.Port{Protocol: corev1.ProtocolUDP, Port: 53}},
		{PortRange: &anpv1alpha1.PortRange{Start: 8000, End: 8080}},
		{NamedPort: &web},
	}
	team := metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}
	app := metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{"db"}}}}
	anp := &anpv1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "guard"}, Spec: anpv1alpha1.AdminNetworkPolicySpec{
		Priority: 7,
		Subject:  anpv1alpha1.AdminNetworkPolicySubject{Pods: &anpv1alpha1.NamespacedPod{NamespaceSelector: team, PodSelector: app}},
		Ingress: []anpv1alpha1.AdminNetworkPolicyIngressRule{
			{Name: "from-team", Action: anpv1alpha1.AdminNetworkPolicyRuleActionPass, From: []anpv1alpha1.AdminNetworkPolicyIngressPeer{{Namespaces: &team}}, Ports: &ports},
			{Action: anpv1alpha1.AdminNetworkPolicyRuleActionDeny, From: []anpv1alpha1.AdminNetworkPolicyIngressPeer{{Pods: &anpv1alpha1.NamespacedPod{PodSelector: app}}}},
		},
		Egress: []anpv1alpha1.AdminNetworkPolicyEgressRule{
			{Name: "dns-only", Action: anpv1alpha1.AdminNetworkPolicyRuleActionAllow, To: []anpv1alpha1.AdminNetworkPolicyEgressPeer{{DomainNames: []anpv1alpha1.DomainName{"example.org"}}}},
			{Action: anpv1alpha1.AdminNetworkPolicyRuleActionAllow, To: []anpv1alpha1.AdminNetworkPolicyEgressPeer{
				{DomainNames: []anpv1alpha1.DomainName{"*.example.org"}}, {Networks: []anpv1alpha1.CIDR{"10.0.0.0/8", "fd00::/8"}}}},
			{Action: anpv1alpha1.AdminNetworkPolicyRuleActionDeny, To: []anpv1alpha1.AdminNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{}}}},
		},
	}}
	teamSel, appSel := policy.Selector{MatchLabels: map[string]string{"team": "a"}}, policy.Selector{Expressions: []policy.Requirement{{Key: "app", Operator: policy.OpIn, Values: []string{"db"}}}}
	want := policy.AdminPolicy{Name: "guard", Priority: 7,
		Subject: policy.AdminSubject{Pods: &policy.NamespacedPods{Namespaces: teamSel, Pods: appSel}},
		Ingress: []policy.AdminRule{
			{Name: "from-team", Action: policy.Pass, Peers: []policy.AdminPeer{{Namespaces: &teamSel}},
				Ports: []policy.Port{{Protocol: policy.UDP, Port: 53}, {Protocol: policy.TCP, Port: 8000, EndPort: 8080},
					{Protocol: policy.TCP, Name: "web"}, {Protocol: policy.UDP, Name: "web"}, {Protocol: policy.SCTP, Name: "web"}}},
			{Action: policy.Deny, Peers: []policy.AdminPeer{{Pods: &policy.NamespacedPods{Pods: appSel}}}},
		},
		Egress: []policy.AdminRule{
			{Action: policy.Allow, Peers: []policy.AdminPeer{{Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}}}},
			{Action: policy.Deny, Peers: []policy.AdminPeer{{Nodes: &policy.Selector{}}}},
		},
	}
	got, err := ConvertAdminPolicy(anp)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v, %v\nwant %+v", got, err, want)
	}
	if err := got.Validate(); err != nil {
		t.Error(err)
	}

	for name, mod := range map[string]func(*anpv1alpha1.AdminNetworkPolicy){
		"bad CIDR":   func(a *anpv1alpha1.AdminNetworkPolicy) { a.Spec.Egress[1].To[1].Networks[0] = "10.0.0.0/33" },
		"empty peer": func(a *anpv1alpha1.AdminNetworkPolicy) { a.Spec.Ingress[1].From[0].Pods = nil },
		"empty port": func(a *anpv1alpha1.AdminNetworkPolicy) { (*a.Spec.Ingress[0].Ports)[0].PortNumber = nil },
	} {
		bad := anp.DeepCopy()
		mod(bad)
		if _, err := ConvertAdminPolicy(bad); !errors.Is(err, policy.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

// TestConvertBaselinePolicy: a BaselineAdminNetworkPolicy converts as an
// AdminNetworkPolicy's rules do; a namespaces subject stays one.
func TestConvertBaselinePolicy(t *testing.T) {
	banp := &anpv1alpha1.BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: anpv1alpha1.BaselineAdminNetworkPolicySpec{
		Subject: anpv1alpha1.AdminNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
		Ingress: []anpv1alpha1.BaselineAdminNetworkPolicyIngressRule{{Action: anpv1alpha1.BaselineAdminNetworkPolicyRuleActionDeny,
			From: []anpv1alpha1.AdminNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}},
		Egress: []anpv1alpha1.BaselineAdminNetworkPolicyEgressRule{{Action: anpv1alpha1.BaselineAdminNetworkPolicyRuleActionAllow,
			To: []anpv1alpha1.BaselineAdminNetworkPolicyEgressPeer{{Networks: []anpv1alpha1.CIDR{"192.168.0.0/16"}}}}},
	}}
	want := policy.BaselinePolicy{Name: "default", Subject: policy.AdminSubject{Namespaces: &policy.Selector{}},
		Ingress: []policy.AdminRule{{Action: policy.Deny, Peers: []policy.AdminPeer{{Namespaces: &policy.Selector{}}}}},
		Egress:  []policy.AdminRule{{Action: policy.Allow, Peers: []policy.AdminPeer{{Networks: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}}}}},
	}
	got, err := ConvertBaselinePolicy(banp)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v, %v\nwant %+v", got, err, want)
	}
	if err := got.Validate(); err != nil {
		t.Error(err)
	}
}

// TestConvertNode: labels and the InternalIP and ExternalIP addresses,
// not the host name; a bad address is ErrInvalid.
func TestConvertNode(t *testing.T) {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{"zone": "a"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeHostName, Address: "node1"}, {Type: corev1.NodeInternalIP, Address: "10.240.0.11"},
			{Type: corev1.NodeInternalIP, Address: "fd00:240::11"}, {Type: corev1.NodeExternalIP, Address: "192.0.2.11"}}}}
	got, err := ConvertNode(n)
	want := policy.Node{Name: "node1", Labels: map[string]string{"zone": "a"},
		IPs: []netip.Addr{netip.MustParseAddr("10.240.0.11"), netip.MustParseAddr("fd00:240::11"), netip.MustParseAddr("192.0.2.11")}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, %v\nwant %+v", got, err, want)
	}
	n.Status.Addresses[1].Address = "10.240.0"
	if _, err := ConvertNode(n); !errors.Is(err, policy.ErrInvalid) {
		t.Errorf("bad address: %v, want ErrInvalid", err)
	}
}
