package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	anpv1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	anpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
)

// installAdminCRDs installs the AdminNetworkPolicy and
// BaselineAdminNetworkPolicy CRDs policy/kube's tests use and returns a
// client of them; the test's end deletes them.
func installAdminCRDs(t *testing.T, l *lab) anpclient.Interface {
	t.Helper()
	files, err := filepath.Glob("../../policy/kube/testdata/policy.networking.k8s.io_*.yaml")
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	remove, err := l.cp.InstallCRDs(ctx, files...)
	must(t, err)
	t.Cleanup(remove)
	ac, err := anpclient.NewForConfig(l.cp.Config)
	must(t, err)
	return ac
}

// TestAgentAdminNetworkPolicy: with the CRDs served when it starts, the
// agent (--admin-network-policy=auto) enforces the evaluation order
// AdminNetworkPolicy, NetworkPolicy, BaselineAdminNetworkPolicy on real
// traffic: the baseline's deny refuses the client; a NetworkPolicy that
// allows it wins over the baseline; an admin policy's deny wins over the
// NetworkPolicy, and deleting it lets the client in again.
func TestAgentAdminNetworkPolicy(t *testing.T) {
	l := newLab(t, 2)
	ac := installAdminCRDs(t, l)
	n0, n1 := l.nodes[0], l.nodes[1]
	n0.start()
	n1.start("--network-policy=false")
	n0.ready()
	n1.ready()
	eventually(t, 20*time.Second, "the agent following admin policies", func() (bool, string) {
		return strings.Contains(n0.agent.log.String(), "following AdminNetworkPolicies"), n0.agent.log.String()
	})
	ns := l.prefix + "-anp"
	l.createNamespace(ns)
	reach := clientAndServer(t, ns, n1, n0)
	reach(true, "the client reaching the server before any policy")

	ctx := context.Background()
	server := anpv1alpha1.AdminNetworkPolicySubject{Pods: &anpv1alpha1.NamespacedPod{
		NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
		PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}}}
	fromNS := []anpv1alpha1.AdminNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}}}
	banp := &anpv1alpha1.BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: anpv1alpha1.BaselineAdminNetworkPolicySpec{
		Subject: server,
		Ingress: []anpv1alpha1.BaselineAdminNetworkPolicyIngressRule{{Name: "deny-ns", Action: anpv1alpha1.BaselineAdminNetworkPolicyRuleActionDeny, From: fromNS}},
	}}
	_, err := ac.PolicyV1alpha1().BaselineAdminNetworkPolicies().Create(ctx, banp, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() {
		ac.PolicyV1alpha1().BaselineAdminNetworkPolicies().Delete(context.Background(), "default", metav1.DeleteOptions{})
	})
	reach(false, "the baseline denying the client")

	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "from-client"}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
		Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}}}},
	}}
	_, err = l.cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{})
	must(t, err)
	reach(true, "the NetworkPolicy allowing the client over the baseline")

	anp := &anpv1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: l.prefix + "-deny"}, Spec: anpv1alpha1.AdminNetworkPolicySpec{
		Priority: 10, Subject: server,
		Ingress: []anpv1alpha1.AdminNetworkPolicyIngressRule{{Name: "deny-ns", Action: anpv1alpha1.AdminNetworkPolicyRuleActionDeny, From: fromNS}},
	}}
	_, err = ac.PolicyV1alpha1().AdminNetworkPolicies().Create(ctx, anp, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() {
		ac.PolicyV1alpha1().AdminNetworkPolicies().Delete(context.Background(), anp.Name, metav1.DeleteOptions{})
	})
	reach(false, "the admin policy denying the client over the NetworkPolicy")

	must(t, ac.PolicyV1alpha1().AdminNetworkPolicies().Delete(ctx, anp.Name, metav1.DeleteOptions{}))
	reach(true, "the client allowed again once the admin policy is gone")
}
