package main

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/policy"
	"github.com/podnet/podnet/policy/cnisock"
	policykube "github.com/podnet/podnet/policy/kube"
)

// policyNode is a node whose NetworkPolicy agent side runs in the test:
// the real enforcer in the node's namespace, fed by policy/kube from the
// shared API server as node "node0", serving cnisock at socket; pns is a
// Kubernetes namespace of the test's own.
type policyNode struct {
	*node
	cs     kubernetes.Interface
	socket string
	pns    string
}

func newPolicyNode(t *testing.T, pns string) *policyNode {
	t.Helper()
	cs, err := kubetest.Shared(t).Client()
	must(t, err)
	ctx := context.Background()
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pns}}, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() { cs.CoreV1().Namespaces().Delete(ctx, pns, metav1.DeleteOptions{}) })
	_, err = cs.CoreV1().ServiceAccounts(pns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	must(t, err)
	pn := &policyNode{node: newNode(t), cs: cs, socket: filepath.Join(t.TempDir(), "policy.sock"), pns: pns}
	e, err := policy.New(policy.Config{NetNS: pn.ns})
	must(t, err)
	src, err := policykube.New(policykube.Config{Client: cs, Enforcer: e, NodeName: "node0", PodWait: 2 * time.Second})
	must(t, err)
	ln, err := cnisock.Listen(pn.socket)
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	must(t, src.Start(ctx))
	wg.Add(2)
	go func() {
		defer wg.Done()
		e.Run(ctx, policy.RunConfig{OnSync: func(_ policy.SyncResult, err error) {
			if err != nil {
				t.Errorf("sync: %v", err)
			}
		}})
	}()
	go func() {
		defer wg.Done()
		if err := (&cnisock.Server{Handler: src}).Serve(ctx, ln); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	return pn
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// conf is the node's configuration with the policy socket.
func (pn *policyNode) conf() []byte {
	return pn.node.conf("1.0.0", map[string]any{"policySocket": pn.socket})
}

// createPod creates a Pod of node0 with labels and no address, as the
// scheduler leaves it for kubelet, and returns its UID.
func (pn *policyNode) createPod(name string, labels map[string]string) string {
	p, err := pn.cs.CoreV1().Pods(pn.pns).Create(context.Background(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "node0", Containers: []corev1.Container{{Name: "c", Image: "none"}}}}, metav1.CreateOptions{})
	must(pn.t, err)
	return string(p.UID)
}

// runtimeConf is what kubelet's runtime passes for pod name: CNI_ARGS
// with IgnoreUnknown and the pod's namespace, name and UID.
func (pn *policyNode) runtimeConf(pod *netns.NS, name, uid string) *libcni.RuntimeConf {
	rt := runtimeConf(pod, "sandbox-"+name)
	rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", pn.pns}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", uid}}
	return rt
}

// start creates pod name and runs ADD for it, as kubelet does; it
// returns the pod's namespace and address.
func (pn *policyNode) start(name string, labels map[string]string) (*netns.NS, netip.Addr) {
	pn.t.Helper()
	uid := pn.createPod(name, labels)
	time.Sleep(100 * time.Millisecond) // the Pod reaches the agent's informer before kubelet's ADD, as in a cluster; AddSandbox would wait for it
	pod := nstest.NewNamed(pn.t)
	res, err := pn.add(pn.conf(), pn.runtimeConf(pod, name, uid))
	if err != nil {
		pn.t.Fatalf("ADD %s: %v", name, err)
	}
	return pod, podIP(pn.t, res)
}

// TestPolicyFromFirstPacket: with the policy socket, ADD returns with
// the new pod's policies in force, before any status.podIPs: the first
// connection of a peer the policy denies is refused, the first of one it
// allows gets through, and so does the new pod's first connection to an
// isolated peer that allows it. DEL makes the agent forget the address.
func TestPolicyFromFirstPacket(t *testing.T) {
	pn := newPolicyNode(t, "bridge-first-packet")
	ctx := context.Background()
	for _, np := range []*networkingv1.NetworkPolicy{
		{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "allowed"}}}}}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "db"}, Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}}}}},
	} {
		_, err := pn.cs.NetworkingV1().NetworkPolicies(pn.pns).Create(ctx, np, metav1.CreateOptions{})
		must(t, err)
	}
	allowed, _ := pn.start("allowed", map[string]string{"role": "allowed"})
	intruder, _ := pn.start("intruder", map[string]string{"role": "other"})
	db, dbIP := pn.start("db", map[string]string{"app": "db"})
	dbSrv, err := probe.Serve(db, netip.AddrPortFrom(dbIP, 5432), "db")
	must(t, err)
	defer dbSrv.Close()

	web, webIP := pn.start("web", map[string]string{"app": "web"})
	// The pod's container starts once ADD has returned: from here on,
	// every first attempt counts.
	srv, err := probe.Serve(web, netip.AddrPortFrom(webIP, 8080), "web")
	must(t, err)
	defer srv.Close()
	dst := netip.AddrPortFrom(webIP, 8080)
	if _, err := probe.Ask(intruder, "tcp", dst, 500*time.Millisecond); err == nil {
		t.Error("the intruder's first connection after ADD reached the new pod")
	}
	if r, err := probe.Ask(allowed, "tcp", dst, 2*time.Second); err != nil || r.Name != "web" {
		t.Errorf("the allowed client's first connection after ADD: %v %v", r.Name, err)
	}
	if r, err := probe.Ask(web, "tcp", netip.AddrPortFrom(dbIP, 5432), 2*time.Second); err != nil || r.Name != "db" {
		t.Errorf("the new pod's first connection to the isolated db that allows it: %v %v", r.Name, err)
	}

	must(t, pn.del(pn.conf(), pn.runtimeConf(web, "web", "")))
	eventuallyTable(t, pn, "the deleted sandbox's address gone", func(s string) bool { return !strings.Contains(s, webIP.String()+" : goto") })
}

// TestPolicyAgentFailures: ADD fails with CNI's "try again later" (11),
// saying why, and leaves nothing behind, when no agent listens (at once)
// and when the agent does not know the pod (after its wait); a container
// that is no pod (no K8S_POD_NAME) is not the agent's business.
func TestPolicyAgentFailures(t *testing.T) {
	pn := newPolicyNode(t, "bridge-agent-failures")
	down := pn.node.conf("1.0.0", map[string]any{"policySocket": filepath.Join(t.TempDir(), "none.sock")})
	pod := nstest.NewNamed(t)
	start := time.Now()
	_, err := pn.add(down, pn.runtimeConf(pod, "nobody", ""))
	took := time.Since(start)
	checkTryAgain(t, err, "no NetworkPolicy agent answers")
	if took > 2*time.Second {
		t.Errorf("ADD without an agent took %v, want it to fail at once", took)
	}
	t.Logf("agent down: ADD failed in %v: %v", took, err)
	pn.nothingLeft(pod)

	start = time.Now()
	_, err = pn.add(pn.conf(), pn.runtimeConf(pod, "unknown", ""))
	checkTryAgain(t, err, "does not know pod "+pn.pns+"/unknown")
	t.Logf("pod unknown: ADD failed in %v: %v", time.Since(start), err)
	pn.nothingLeft(pod)

	if _, err := pn.add(down, runtimeConf(pod, "not-a-pod")); err != nil {
		t.Errorf("ADD of a container that is no pod: %v", err)
	}
}

func checkTryAgain(t *testing.T, err error, want string) {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, want) {
		t.Errorf("ADD = %v, want CNI error %d saying %q", err, types.ErrTryAgainLater, want)
	}
}

// nothingLeft checks that a failed ADD left no port, lease or address.
func (pn *policyNode) nothingLeft(pod *netns.NS) {
	pn.t.Helper()
	if l := pn.leases("bridge"); len(l) != 0 {
		pn.t.Errorf("leases left: %v", l)
	}
	if ps := pn.ports(); len(ps) != 0 {
		pn.t.Errorf("ports left: %v", ps)
	}
}

func eventuallyTable(t *testing.T, pn *policyNode, what string, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := execns.Output(context.Background(), pn.ns, nil, "nft", "list", "table", "inet", policy.DefaultTable)
		if err == nil && ok(string(out)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; table:\n%s", what, out)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}
