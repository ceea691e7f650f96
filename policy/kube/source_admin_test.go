package kube

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	anpv1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	anpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
)

// installAdminCRDs installs the AdminNetworkPolicy and
// BaselineAdminNetworkPolicy CRDs of testdata (generated from
// sigs.k8s.io/network-policy-api v0.3.0's apis/v1alpha1, which ships no
// v1alpha1 CRDs; see testdata/README) and returns a client once the API
// server serves them; the test's end deletes them.
func installAdminCRDs(t *testing.T, cp *kubetest.ControlPlane) anpclient.Interface {
	t.Helper()
	files, err := filepath.Glob("testdata/policy.networking.k8s.io_*.yaml")
	must(t, err)
	if len(files) != 2 {
		t.Fatalf("CRDs in testdata: %v", files)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	remove, err := cp.InstallCRDs(ctx, files...)
	must(t, err)
	t.Cleanup(remove)
	ac, err := anpclient.NewForConfig(cp.Config)
	must(t, err)
	return ac
}

// TestSourceFollowsAdminPolicies: an AdminNetworkPolicy and a
// BaselineAdminNetworkPolicy made through a real API server (with their
// CRDs' schema and validation) reach the table: the local subject pod's
// address in the ingress map, the admin rules' chain with the remote
// peer and the network in their sets, the baseline's chain, a Node's
// address in a nodes peer (and out again when relabelled); an admin
// policy the enforcer refuses is counted; deleting the policies takes
// their chains and elements out.
func TestSourceFollowsAdminPolicies(t *testing.T) {
	cp := kubetest.Shared(t)
	cs, err := cp.Client()
	must(t, err)
	ac := installAdminCRDs(t, cp)
	ctx := context.Background()
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bank", Labels: map[string]string{"team": "b"}}}, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() { cs.CoreV1().Namespaces().Delete(ctx, "bank", metav1.DeleteOptions{}) })
	_, err = cs.CoreV1().ServiceAccounts("bank").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	must(t, err)
	createPod(t, cs, "bank", pod("vault", "node0", "10.244.0.7", map[string]string{"app": "vault"}))
	createPod(t, cs, "bank", pod("teller", "node1", "10.244.1.8", map[string]string{"app": "teller"}))
	src, _, ns := followConfig(t, Config{Client: cs, AdminClient: ac})

	team := metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}
	anp := &anpv1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "guard"}, Spec: anpv1alpha1.AdminNetworkPolicySpec{
		Priority: 5,
		Subject:  anpv1alpha1.AdminNetworkPolicySubject{Namespaces: &team},
		Ingress: []anpv1alpha1.AdminNetworkPolicyIngressRule{{Action: anpv1alpha1.AdminNetworkPolicyRuleActionDeny,
			From: []anpv1alpha1.AdminNetworkPolicyIngressPeer{{Pods: &anpv1alpha1.NamespacedPod{NamespaceSelector: team, PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "teller"}}}}}}},
		Egress: []anpv1alpha1.AdminNetworkPolicyEgressRule{{Action: anpv1alpha1.AdminNetworkPolicyRuleActionAllow,
			To: []anpv1alpha1.AdminNetworkPolicyEgressPeer{{Networks: []anpv1alpha1.CIDR{"192.0.2.0/24"}}}}},
	}}
	_, err = ac.PolicyV1alpha1().AdminNetworkPolicies().Create(ctx, anp, metav1.CreateOptions{})
	must(t, err)
	eventually(t, ns, "the admin policy", func(s string) bool {
		return strings.Contains(s, "10.244.0.7 : goto set-in-ip-") && strings.Contains(s, "chain adm-in-ip-") && strings.Contains(s, "chain adm-eg-ip-") &&
			strings.Contains(s, "10.244.1.8") && strings.Contains(s, "192.0.2.0/24")
	})

	banp := &anpv1alpha1.BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: anpv1alpha1.BaselineAdminNetworkPolicySpec{
		Subject: anpv1alpha1.AdminNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
		Ingress: []anpv1alpha1.BaselineAdminNetworkPolicyIngressRule{{Action: anpv1alpha1.BaselineAdminNetworkPolicyRuleActionDeny,
			From: []anpv1alpha1.AdminNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}},
	}}
	_, err = ac.PolicyV1alpha1().BaselineAdminNetworkPolicies().Create(ctx, banp, metav1.CreateOptions{})
	must(t, err)
	eventually(t, ns, "the baseline policy", func(s string) bool { return strings.Contains(s, "chain banp-in-ip-") })

	nodesPeerStep(t, cs, ac, ns, team)
	refusedStep(t, src, ac, anp)

	must(t, ac.PolicyV1alpha1().AdminNetworkPolicies().Delete(ctx, "to-nodes", metav1.DeleteOptions{}))
	must(t, ac.PolicyV1alpha1().AdminNetworkPolicies().Delete(ctx, "guard", metav1.DeleteOptions{}))
	eventually(t, ns, "the admin policy deleted", func(s string) bool {
		return !strings.Contains(s, "chain adm-") && !strings.Contains(s, "192.0.2.0/24") && strings.Contains(s, "chain banp-in-ip-")
	})
	must(t, ac.PolicyV1alpha1().BaselineAdminNetworkPolicies().Delete(ctx, "default", metav1.DeleteOptions{}))
	eventually(t, ns, "the baseline policy deleted", func(s string) bool { return !strings.Contains(s, "10.244.0.7") })
}

// nodesPeerStep: a nodes peer of an admin policy holds the Node's
// InternalIP, gone when the Node is relabelled out of the selector.
func nodesPeerStep(t *testing.T, cs kubernetes.Interface, ac anpclient.Interface, ns *netns.NS, team metav1.LabelSelector) {
	t.Helper()
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node9", Labels: map[string]string{"zone": "far"}}}
	node, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), "node9", metav1.DeleteOptions{}) })
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.240.0.99"}}
	node, err = cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	must(t, err)
	nodes := &anpv1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "to-nodes"}, Spec: anpv1alpha1.AdminNetworkPolicySpec{
		Priority: 6, Subject: anpv1alpha1.AdminNetworkPolicySubject{Namespaces: &team},
		Egress: []anpv1alpha1.AdminNetworkPolicyEgressRule{{Action: anpv1alpha1.AdminNetworkPolicyRuleActionDeny,
			To: []anpv1alpha1.AdminNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{MatchLabels: map[string]string{"zone": "far"}}}}}},
	}}
	_, err = ac.PolicyV1alpha1().AdminNetworkPolicies().Create(ctx, nodes, metav1.CreateOptions{})
	must(t, err)
	eventually(t, ns, "the node in the nodes peer", func(s string) bool { return strings.Contains(s, "10.240.0.99") })
	node.Labels["zone"] = "near"
	_, err = cs.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
	must(t, err)
	eventually(t, ns, "the node relabelled out", func(s string) bool { return !strings.Contains(s, "10.240.0.99") })

}

// refusedStep: what the CRD's schema takes and the enforcer refuses (an
// unknown selector operator) is counted and changes nothing; what the API
// server's validation refuses (a priority above 1000) never arrives.
func refusedStep(t *testing.T, src *Source, ac anpclient.Interface, anp *anpv1alpha1.AdminNetworkPolicy) {
	t.Helper()
	ctx := context.Background()
	_, rejected := src.Changes()
	odd := anp.DeepCopy()
	odd.Name, odd.Spec.Subject.Namespaces = "odd", &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Near"}}}
	_, err := ac.PolicyV1alpha1().AdminNetworkPolicies().Create(ctx, odd, metav1.CreateOptions{})
	must(t, err)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, r := src.Changes(); r > rejected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the admin policy with an unknown operator was not refused")
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}

	// An API server's validation holds too: a priority above 1000.
	bad := anp.DeepCopy()
	bad.Name, bad.Spec.Priority = "too-low", 1001
	if _, err := ac.PolicyV1alpha1().AdminNetworkPolicies().Create(ctx, bad, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Errorf("priority 1001: %v, want the API server to refuse it", err)
	}

}
