package kube

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/policy"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// follow starts an enforcer in a throwaway namespace, fed by a Source on
// the shared control plane as node "node0", and runs it.
func follow(t *testing.T, cs kubernetes.Interface) (*policy.Enforcer, *netns.NS) {
	t.Helper()
	_, e, ns := followConfig(t, Config{Client: cs})
	return e, ns
}

// followConfig is follow with cfg (Enforcer and NodeName filled in),
// returning the Source too.
func followConfig(t *testing.T, cfg Config) (*Source, *policy.Enforcer, *netns.NS) {
	t.Helper()
	e, ns := newEnforcer(t)
	cfg.Enforcer, cfg.NodeName = e, "node0"
	src, err := New(cfg)
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait(); e.Cleanup(context.Background()) })
	must(t, src.Start(ctx))
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.Run(ctx, policy.RunConfig{SyncPeriod: time.Hour, OnSync: func(_ policy.SyncResult, err error) {
			if err != nil {
				t.Errorf("sync: %v", err)
			}
		}})
	}()
	return src, e, ns
}

func newEnforcer(t *testing.T) (*policy.Enforcer, *netns.NS) {
	t.Helper()
	ns := nstest.New(t)
	e, err := policy.New(policy.Config{NetNS: ns, SkipBridgeNetfilter: true})
	must(t, err)
	return e, ns
}

// eventually polls the enforcer's table, as nft lists it, until ok
// accepts it.
func eventually(t *testing.T, ns *netns.NS, what string, ok func(table string) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := execns.Output(context.Background(), ns, nil, "nft", "list", "table", "inet", policy.DefaultTable)
		if ok(string(out)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; table:\n%s", what, out)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

func pod(name, node, ip string, labels map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "agnhost", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

// createPod creates p with its status (addresses), as kubelet reports it.
func createPod(t *testing.T, cs kubernetes.Interface, ns string, p *corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	created, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	must(t, err)
	created.Status = p.Status
	_, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	must(t, err)
}

// TestSourceFollowsAPIServer: Pods, Namespaces and a NetworkPolicy made
// through a real API server reach the enforcer's table: the isolated
// local pod's address in the ingress map, the selected remote peer in the
// rule's peers set, the named port resolved on the local pod; a peer
// relabelled out of the selector, its namespace relabelled, the policy
// deleted and the pod ended all take their elements out again.
func TestSourceFollowsAPIServer(t *testing.T) {
	cp := kubetest.Shared(t)
	cs, err := cp.Client()
	must(t, err)
	ctx := context.Background()
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "a"}}}, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() { cs.CoreV1().Namespaces().Delete(ctx, "shop", metav1.DeleteOptions{}) })
	// No controller manager makes the default service account pods need.
	_, err = cs.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	must(t, err)
	createPod(t, cs, "shop", pod("web", "node0", "10.244.0.5", map[string]string{"app": "web"}, corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}))
	createPod(t, cs, "shop", pod("client", "node1", "10.244.1.6", map[string]string{"app": "client"}))
	_, ns := follow(t, cs)

	http := intstr.FromString("http")
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
		Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}, NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}}},
			Ports: []networkingv1.NetworkPolicyPort{{Port: &http}},
		}},
	}}
	_, err = cs.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{})
	must(t, err)
	eventually(t, ns, "the policy", func(s string) bool {
		return strings.Contains(s, "10.244.0.5 : goto set-in-ip-") && strings.Contains(s, "10.244.1.6") && strings.Contains(s, "10.244.0.5 . tcp . 8080")
	})

	client, err := cs.CoreV1().Pods("shop").Get(ctx, "client", metav1.GetOptions{})
	must(t, err)
	client.Labels = map[string]string{"app": "other"}
	_, err = cs.CoreV1().Pods("shop").Update(ctx, client, metav1.UpdateOptions{})
	must(t, err)
	eventually(t, ns, "the peer relabelled out", func(s string) bool { return !strings.Contains(s, "10.244.1.6") })
	client.Labels = map[string]string{"app": "client"}
	client.ResourceVersion = ""
	_, err = cs.CoreV1().Pods("shop").Update(ctx, client, metav1.UpdateOptions{})
	must(t, err)
	eventually(t, ns, "the peer relabelled in", func(s string) bool { return strings.Contains(s, "10.244.1.6") })

	shop, err := cs.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	must(t, err)
	shop.Labels["team"] = "b"
	_, err = cs.CoreV1().Namespaces().Update(ctx, shop, metav1.UpdateOptions{})
	must(t, err)
	eventually(t, ns, "the namespace relabelled out", func(s string) bool { return !strings.Contains(s, "10.244.1.6") })

	must(t, cs.NetworkingV1().NetworkPolicies("shop").Delete(ctx, "web", metav1.DeleteOptions{}))
	eventually(t, ns, "the policy deleted", func(s string) bool { return !strings.Contains(s, "10.244.0.5") })
}
