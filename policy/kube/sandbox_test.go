package kube

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/policy"
	"github.com/podnet/podnet/policy/cnisock"
)

// sandboxLab is a Source and a running enforcer on the shared control
// plane as node "node0", with a namespace of its own holding a policy
// that isolates pods labelled app=web.
type sandboxLab struct {
	t   *testing.T
	cs  kubernetes.Interface
	src *Source
	ns  *netns.NS
	pns string // the Kubernetes namespace
}

func newSandboxLab(t *testing.T, pns string) *sandboxLab {
	t.Helper()
	cs, err := kubetest.Shared(t).Client()
	must(t, err)
	ctx := context.Background()
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pns}}, metav1.CreateOptions{})
	must(t, err)
	t.Cleanup(func() { cs.CoreV1().Namespaces().Delete(ctx, pns, metav1.DeleteOptions{}) })
	_, err = cs.CoreV1().ServiceAccounts(pns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	must(t, err)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}
	_, err = cs.NetworkingV1().NetworkPolicies(pns).Create(ctx, np, metav1.CreateOptions{})
	must(t, err)
	l := &sandboxLab{t: t, cs: cs, pns: pns}
	l.src, l.ns = followWith(t, cs, Config{PodWait: 300 * time.Millisecond})
	return l
}

// followWith is follow with more of the Source's configuration.
func followWith(t *testing.T, cs kubernetes.Interface, cfg Config) (*Source, *netns.NS) {
	t.Helper()
	e, ns := newEnforcer(t)
	cfg.Client, cfg.Enforcer, cfg.NodeName = cs, e, "node0"
	src, err := New(cfg)
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait(); e.Cleanup(context.Background()) })
	must(t, src.Start(ctx))
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.Run(ctx, policy.RunConfig{SyncPeriod: time.Hour})
	}()
	return src, ns
}

// createPod creates a pod of node (no address yet: no status) and
// returns its UID.
func (l *sandboxLab) createPod(name, node string, labels map[string]string) string {
	p, err := l.cs.CoreV1().Pods(l.pns).Create(context.Background(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "none"}}}}, metav1.CreateOptions{})
	must(l.t, err)
	return string(p.UID)
}

func (l *sandboxLab) add(name, uid, container, ip string) error {
	return l.src.AddSandbox(context.Background(), cnisock.Request{Version: cnisock.Version, Op: cnisock.Add, ContainerID: container,
		Namespace: l.pns, Name: name, UID: uid, IPs: []netip.Addr{netip.MustParseAddr(ip)}})
}

func (l *sandboxLab) del(name, container string) {
	must(l.t, l.src.DeleteSandbox(context.Background(), cnisock.Request{Version: cnisock.Version, Op: cnisock.Del, ContainerID: container, Namespace: l.pns, Name: name}))
}

// isolated reports whether the table sends traffic to ip to a policy
// set now, as nft lists it.
func (l *sandboxLab) isolated(ip string) bool {
	out, err := execns.Output(context.Background(), l.ns, nil, "nft", "list", "map", "inet", policy.DefaultTable, "ingress-ip")
	must(l.t, err)
	return strings.Contains(string(out), ip+" : goto set-in-ip-")
}

// TestAddSandbox: the pod's address from its ADD is in force when
// AddSandbox returns, before any status; status.podIPs with the same
// address takes over (a DEL then changes nothing); a DEL of another
// sandbox is ignored, of this one removes the address.
func TestAddSandbox(t *testing.T) {
	l := newSandboxLab(t, "sandbox-add")
	uid := l.createPod("web", "node0", map[string]string{"app": "web"})
	l.cached("web") // the Pod reaches the informer before ADD, as it reaches kubelet
	must(t, l.add("web", uid, "c1", "10.244.0.7"))
	if !l.isolated("10.244.0.7") {
		t.Fatal("AddSandbox returned before the pod's address was isolated")
	}
	l.del("web", "c0") // another sandbox's DEL
	if !l.isolated("10.244.0.7") {
		t.Fatal("the DEL of another sandbox removed the address")
	}
	l.del("web", "c1")
	eventually(t, l.ns, "the address gone after its sandbox's DEL", func(s string) bool { return !strings.Contains(s, "10.244.0.7") })

	// Again, then kubelet's status with the same address takes over.
	must(t, l.add("web", uid, "c2", "10.244.0.7"))
	ctx := context.Background()
	p, err := l.cs.CoreV1().Pods(l.pns).Get(ctx, "web", metav1.GetOptions{})
	must(t, err)
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.7", PodIPs: []corev1.PodIP{{IP: "10.244.0.7"}}}
	_, err = l.cs.CoreV1().Pods(l.pns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	must(t, err)
	pollUntil(t, "the status taking over the sandbox's addresses", func() bool {
		l.src.mu.Lock()
		defer l.src.mu.Unlock()
		return len(l.src.sandboxes) == 0
	})
	l.del("web", "c2")
	if !l.isolated("10.244.0.7") {
		t.Error("a DEL after the status took over removed the pod's address")
	}
	must(t, l.cs.CoreV1().Pods(l.pns).Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}))
	eventually(t, l.ns, "the deleted pod's address gone", func(s string) bool { return !strings.Contains(s, "10.244.0.7") })
}

// TestAddSandboxPodLate: an ADD for a pod the informer delivers while
// it waits succeeds; one for a pod it never delivers, or only an
// earlier incarnation of (another UID), fails with ErrNotFound after
// PodWait and leaves nothing behind.
func TestAddSandboxPodLate(t *testing.T) {
	l := newSandboxLab(t, "sandbox-late")
	done := make(chan error, 1)
	var uid string
	created := make(chan struct{})
	go func() {
		<-created
		done <- l.add("late", uid, "c1", "10.244.0.8")
	}()
	uid = l.createPod("late", "node0", map[string]string{"app": "web"})
	close(created)
	must(t, <-done)
	if !l.isolated("10.244.0.8") {
		t.Error("the pod that came late is not isolated")
	}

	start := time.Now()
	err := l.add("never", "", "c2", "10.244.0.9")
	if !errors.Is(err, ErrNotFound) || time.Since(start) > 5*time.Second {
		t.Errorf("unknown pod: %v after %v, want ErrNotFound after PodWait", err, time.Since(start))
	}
	l.createPod("old", "node0", map[string]string{"app": "web"})
	l.cached("old")
	err = l.add("old", "another-uid", "c3", "10.244.0.10")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("another incarnation: %v, want ErrNotFound", err)
	}
	l.src.mu.Lock()
	left := len(l.src.sandboxes)
	l.src.mu.Unlock()
	if left != 1 || l.isolated("10.244.0.9") || l.isolated("10.244.0.10") || !l.isolated("10.244.0.8") {
		t.Errorf("failed ADDs left %d sandboxes (want the one of 'late') or addresses", left)
	}
}

// TestAddSandboxRefused: a pod of another node, and a request that is
// not valid, are ErrInvalid.
func TestAddSandboxRefused(t *testing.T) {
	l := newSandboxLab(t, "sandbox-refused")
	uid := l.createPod("remote", "node1", nil)
	l.cached("remote")
	if err := l.add("remote", uid, "c1", "10.244.1.5"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "node1") {
		t.Errorf("pod of node1: %v, want ErrInvalid naming its node", err)
	}
	bad := cnisock.Request{Version: cnisock.Version, Op: cnisock.Add, ContainerID: "c", Namespace: l.pns, Name: "remote"}
	if err := l.src.AddSandbox(context.Background(), bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("no address: %v, want ErrInvalid", err)
	}
}

// cached waits until the Source's informer holds pod name.
func (l *sandboxLab) cached(name string) {
	l.t.Helper()
	pollUntil(l.t, "pod "+name+" in the informer's cache", func() bool {
		_, err := l.src.pods.Pods(l.pns).Get(name)
		return err == nil
	})
}

func pollUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}
