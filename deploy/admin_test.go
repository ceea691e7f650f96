package deploy

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	anpv1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	anpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns/nstest/probe"
)

// installAdminCRDs installs the AdminNetworkPolicy and
// BaselineAdminNetworkPolicy CRDs (policy/kube's test copies, generated
// from sigs.k8s.io/network-policy-api) so that the agent, which follows
// them when they are served at its start, uses its ClusterRole's rules
// for them; the test's end deletes them.
func installAdminCRDs(t *testing.T, cp *kubetest.ControlPlane) {
	t.Helper()
	files, err := filepath.Glob("../policy/kube/testdata/policy.networking.k8s.io_*.yaml")
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	remove, err := cp.InstallCRDs(ctx, files...)
	must(t, err)
	t.Cleanup(remove)
}

// adminStep: the agent enforces an AdminNetworkPolicy — the pod of
// policyStep reaches a server on the neighbour until an admin policy
// denies its egress to the neighbour's address (a networks peer).
func adminStep(r *run) error {
	ctx := context.Background()
	dst := netip.AddrPortFrom(peerIP, 8081)
	srv, err := probe.Serve(r.peer, dst, "neighbour")
	must(r.t, err)
	r.clean = append(r.clean, func() { srv.Close() })
	if err := r.await("the pod reaches the neighbour before any admin policy", func() (bool, string) {
		_, err := probe.Ask(r.pod, "tcp", dst, 300*time.Millisecond)
		return err == nil, fmt.Sprint(err)
	}); err != nil {
		return err
	}
	ac, err := anpclient.NewForConfig(r.h.cp.Config)
	must(r.t, err)
	anp := &anpv1alpha1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: r.namespace() + "-deny-neighbour"}, Spec: anpv1alpha1.AdminNetworkPolicySpec{
		Priority: 5,
		Subject: anpv1alpha1.AdminNetworkPolicySubject{Pods: &anpv1alpha1.NamespacedPod{
			NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": r.namespace()}},
			PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
		Egress: []anpv1alpha1.AdminNetworkPolicyEgressRule{{Name: "deny-neighbour", Action: anpv1alpha1.AdminNetworkPolicyRuleActionDeny,
			To: []anpv1alpha1.AdminNetworkPolicyEgressPeer{{Networks: []anpv1alpha1.CIDR{anpv1alpha1.CIDR(peerIP.String() + "/32")}}}}},
	}}
	_, err = ac.PolicyV1alpha1().AdminNetworkPolicies().Create(ctx, anp, metav1.CreateOptions{})
	must(r.t, err)
	r.clean = append(r.clean, func() { ac.PolicyV1alpha1().AdminNetworkPolicies().Delete(ctx, anp.Name, metav1.DeleteOptions{}) })
	return r.await("the agent enforces an AdminNetworkPolicy denying the pod's egress to the neighbour", func() (bool, string) {
		reply, err := probe.Ask(r.pod, "tcp", dst, 300*time.Millisecond)
		return err != nil, fmt.Sprintf("still answered: %s", reply.Name)
	})
}
