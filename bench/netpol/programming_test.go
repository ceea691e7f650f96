package netpol

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/policy"
	"github.com/podnet/podnet/policy/cnisock"
	"github.com/podnet/podnet/policy/kube"
)

var clientBIP = netip.MustParseAddr("10.244.0.11")

// BenchmarkProgramming loads 1k NetworkPolicies and 10k pods (1000 of
// them on the benchmark's node, so that every policy isolates a local pod)
// into a real API server, starts policy/kube and an Enforcer on a node
// whose three real pods carry traffic, and measures the first (full) sync,
// a second full sync of the populated table, the kernel memory the table
// takes, and, 20 times each, how long after the API call a change lets
// the first connection through: a NetworkPolicy created, a Pod relabelled
// into a policy's peers, a Namespace labelled into a policy's namespace
// selector. Each change is then undone and its refusal awaited.
func BenchmarkProgramming(b *testing.B) {
	for b.Loop() {
		cs := client(b)
		t := time.Now()
		loadCluster(b, cs)
		loaded := time.Since(t)
		nd := newNode(b)
		real := setupReal(b, cs, nd)
		before := settledMemory(b)
		e, listed, syncs, partial := startEnforcer(b, cs, nd, "")
		first := <-syncs
		mem := settledMemory(b) - before
		e.RequestFullSync("benchmark")
		again := <-syncs
		lat := real.measure(b, 20)
		ps := partial()
		fmt.Printf("\nProgramming: %d NetworkPolicies, %d pods (%d local), loaded through the API in %.1f s, listed in %.2f s\n\n",
			nsCount*polPerNS, nsCount*podsPerNS, nsCount*localPerNS, loaded.Seconds(), listed.Seconds())
		fmt.Printf("| first full sync | full sync of the populated table | rules | kernel memory |\n|---|---|---|---|\n")
		fmt.Printf("| %.0f ms | %.0f ms | %d | %.1f MiB |\n\n", ms(first.Duration), ms(again.Duration), first.Rules, float64(mem)/(1<<20))
		fmt.Printf("| change | n | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|\n")
		var all []float64
		for _, c := range real.changes {
			v := lat[c.name]
			all = append(all, v...)
			fmt.Printf("| %s | %d | %.1f ms | %.1f ms | %.1f ms | %.1f ms |\n", c.name, len(v), quantile(v, .5), quantile(v, .9), quantile(v, .99), quantile(v, 1))
		}
		fmt.Printf("| all | %d | %.1f ms | %.1f ms | **%.1f ms** | %.1f ms |\n", len(all), quantile(all, .5), quantile(all, .9), quantile(all, .99), quantile(all, 1))
		fmt.Printf("\nPartial syncs meanwhile (the enforcer's share): %d, p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", len(ps), quantile(ps, .5), quantile(ps, .99), quantile(ps, 1))
		b.ReportMetric(quantile(all, .99), "p99-ms")
		b.ReportMetric(ms(first.Duration), "full-sync-ms")
	}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func client(tb testing.TB) kubernetes.Interface {
	cfg := rest.CopyConfig(kubetest.Shared(tb).Config)
	cfg.QPS, cfg.Burst = 2000, 4000
	cs, err := kubernetes.NewForConfig(cfg)
	must(tb, err)
	return cs
}

// startEnforcer lists the cluster into an Enforcer of nd and runs it,
// serving CNI ADDs on socket unless it is ""; its full syncs arrive on
// the channel, and partial returns the durations of the partial syncs so
// far, in ms.
func startEnforcer(tb testing.TB, cs kubernetes.Interface, nd *node, socket string) (e *policy.Enforcer, listed time.Duration, syncs chan policy.SyncResult, partial func() []float64) {
	e, err := policy.New(policy.Config{NetNS: nd.ns})
	must(tb, err)
	var mu sync.Mutex
	var partials []float64
	partial = func() []float64 {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(partials)
	}
	src, err := kube.New(kube.Config{Client: cs, Enforcer: e, NodeName: nodeName})
	must(tb, err)
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	t := time.Now()
	must(tb, src.Start(ctx))
	listed = time.Since(t)
	if socket != "" {
		ln, err := cnisock.Listen(socket)
		must(tb, err)
		go (&cnisock.Server{Handler: src}).Serve(ctx, ln)
	}
	syncs = make(chan policy.SyncResult, 16)
	go e.Run(ctx, policy.RunConfig{OnSync: func(r policy.SyncResult, err error) {
		switch {
		case err != nil:
			tb.Errorf("sync: %v", err)
		case r.Full:
			syncs <- r
		default:
			mu.Lock()
			partials = append(partials, ms(r.Duration))
			mu.Unlock()
		}
	}})
	return e, listed, syncs, partial
}

// realPods are the pods that carry traffic: a server and a client in
// namespace real-a, a client in real-b; the server is isolated by a
// deny-all policy, and two more policies allow pods labelled friend=yes
// and namespaces labelled access=yes.
type realPods struct {
	client, clientB *netns.NS
	changes         []change
}

type change struct {
	name     string
	from     **netns.NS
	do, undo func(context.Context) error
}

func setupReal(tb testing.TB, cs kubernetes.Interface, nd *node) *realPods {
	ctx := context.Background()
	r := &realPods{client: nd.addPod(clientIP), clientB: nd.addPod(clientBIP)}
	serve(tb, nd.addPod(serverIP), server)
	must(tb, createNamespace(ctx, cs, "real-a", nil))
	must(tb, createNamespace(ctx, cs, "real-b", nil))
	must(tb, createPod(ctx, cs, "real-a", "server", nodeName, map[string]string{"role": "server"}, serverIP))
	must(tb, createPod(ctx, cs, "real-a", "client", nodeName, map[string]string{"role": "client"}, clientIP))
	must(tb, createPod(ctx, cs, "real-b", "client", nodeName, map[string]string{"role": "client"}, clientBIP))
	for name, from := range map[string]*networkingv1.NetworkPolicyPeer{"deny": nil,
		"allow-friends": {PodSelector: labels("friend", "yes")}, "allow-ns": {NamespaceSelector: labels("access", "yes")}} {
		must(tb, createPolicy(ctx, cs, name, from))
	}
	np := cs.NetworkingV1().NetworkPolicies("real-a")
	label := func(ns, pod, k, v string) func(context.Context) error {
		val := "null"
		if v != "" {
			val = `"` + v + `"`
		}
		patch := []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, k, val))
		return func(ctx context.Context) (err error) {
			if pod == "" {
				_, err = cs.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{})
			} else {
				_, err = cs.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{})
			}
			return err
		}
	}
	r.changes = []change{
		{"NetworkPolicy created", &r.client, func(ctx context.Context) error {
			return createPolicy(ctx, cs, "allow-client", &networkingv1.NetworkPolicyPeer{PodSelector: labels("role", "client")})
		}, func(ctx context.Context) error { return np.Delete(ctx, "allow-client", metav1.DeleteOptions{}) }},
		{"Pod relabelled", &r.client, label("real-a", "client", "friend", "yes"), label("real-a", "client", "friend", "")},
		{"Namespace relabelled", &r.clientB, label("real-b", "", "access", "yes"), label("real-b", "", "access", "")},
	}
	return r
}

func labels(k, v string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
}

// createPolicy creates a policy of real-a selecting the server and
// allowing from (nil: nothing).
func createPolicy(ctx context.Context, cs kubernetes.Interface, name string, from *networkingv1.NetworkPolicyPeer) error {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: *labels("role", "server"), PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if from != nil {
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{*from}}}
	}
	_, err := cs.NetworkingV1().NetworkPolicies("real-a").Create(ctx, np, metav1.CreateOptions{})
	return err
}

// measure makes each change rounds times and returns, by change, the
// time from just before its API call to the first connection through.
// A probe whose SYN is dropped gives up after 3 ms: the resolution.
func (r *realPods) measure(tb testing.TB, rounds int) map[string][]float64 {
	ctx := context.Background()
	out := map[string][]float64{}
	await := func(what string, from *netns.NS, want bool) {
		for deadline := time.Now().Add(30 * time.Second); connect(from, server, 3*time.Millisecond) != want; {
			if time.Now().After(deadline) {
				tb.Fatalf("%s: connection allowed is still %v after 30 s", what, !want)
			}
		}
	}
	for _, c := range r.changes {
		await(c.name+" (before)", *c.from, false)
	}
	for range rounds {
		for _, c := range r.changes {
			t := time.Now()
			must(tb, c.do(ctx))
			await(c.name, *c.from, true)
			out[c.name] = append(out[c.name], ms(time.Since(t)))
			must(tb, c.undo(ctx))
			await(c.name+" undone", *c.from, false)
		}
	}
	return out
}
