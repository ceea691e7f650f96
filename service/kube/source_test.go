package kube

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/kubetest"
	"github.com/podnet/podnet/service"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// follow starts a proxy on a Fake backend fed by a Source on the shared
// control plane, and returns the Fake and a channel of sync results.
func follow(t *testing.T, cs kubernetes.Interface) (*iptables.Fake, *service.Proxy, <-chan service.SyncResult) {
	t.Helper()
	return followWith(t, cs, func(*Config) {})
}

// followNode is follow with the source following the zone of Node node.
func followNode(t *testing.T, cs kubernetes.Interface, node string) (*iptables.Fake, *service.Proxy, <-chan service.SyncResult) {
	t.Helper()
	return followWith(t, cs, func(c *Config) { c.NodeName = node })
}

// followWith is follow with the source's Config changed by opt.
func followWith(t *testing.T, cs kubernetes.Interface, opt func(*Config)) (*iptables.Fake, *service.Proxy, <-chan service.SyncResult) {
	t.Helper()
	fk := iptables.NewFake()
	p, err := service.New(service.Config{Backend: service.IPTables(fk), NodeName: "node0", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/16")}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Client: cs, Proxy: p}
	opt(&cfg)
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	if err := src.Start(ctx); err != nil {
		t.Fatal(err)
	}
	results := make(chan service.SyncResult, 100)
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.Run(ctx, service.RunConfig{SyncPeriod: time.Hour, OnSync: func(r service.SyncResult, err error) {
			if err != nil {
				t.Errorf("sync: %v", err)
			}
			select {
			case results <- r:
			default:
			}
		}})
	}()
	return fk, p, results
}

// eventually polls the Fake's IPv4 tables until ok accepts them.
func eventually(t *testing.T, fk *iptables.Fake, what string, ok func(rules string) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok(fk.Dump(iptables.IPv4)) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; rules:\n%s", what, fk.Dump(iptables.IPv4))
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

func namespace(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	name := strings.ToLower(t.Name())
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return name
}

func apiSlice(name, svc string, trigger time.Time, addrs ...string) *discoveryv1.EndpointSlice {
	es := slice(name, discoveryv1.AddressTypeIPv4, 8080)
	es.Labels[discoveryv1.LabelServiceName] = svc
	es.Namespace = ""
	es.Annotations = map[string]string{TriggerTimeAnnotation: trigger.Format(time.RFC3339Nano)}
	for _, a := range addrs {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return es
}

// TestSourceFollowsAPIServer: Services and EndpointSlices made through a
// real API server reach the proxy's rules; a Service that existed before
// the source started is there at its first sync; trigger times of later
// changes come back in SyncResult.Triggers; deletion removes the rules.
func TestSourceFollowsAPIServer(t *testing.T) {
	cp := kubetest.Shared(t)
	cs, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	ns := namespace(t, cs)
	ctx := context.Background()
	mk := func(name string) string {
		svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return svc.Spec.ClusterIP
	}
	early := mk("early")
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, apiSlice("early-1", "early", time.Now(), "10.200.0.7"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fk, _, results := follow(t, cs)
	if r := <-results; !r.Full || !strings.Contains(fk.Dump(iptables.IPv4), "--to-destination 10.200.0.7:8080") {
		t.Fatalf("first sync %+v lacks the Service made before the source started:\n%s", r, fk.Dump(iptables.IPv4))
	} else if len(r.Triggers) != 0 {
		t.Errorf("first sync reports triggers %v from before the source started", r.Triggers)
	}
	_ = early

	web := mk("web")
	trig := time.Now()
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, apiSlice("web-1", "web", trig, "10.200.0.2", "10.200.0.3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, apiSlice("web-2", "web", trig, "10.200.0.3", "10.200.0.4"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, fk, "web's three endpoints", func(r string) bool {
		return strings.Contains(r, "-d "+web+"/32") && strings.Count(r, "--to-destination 10.200.0.") == 4
	})
	sawTrigger := false
	for len(results) > 0 {
		for _, tr := range (<-results).Triggers {
			sawTrigger = sawTrigger || tr.Equal(trig.Truncate(time.Microsecond)) || tr.Sub(trig).Abs() < time.Millisecond
		}
	}
	if !sawTrigger {
		t.Error("no sync reported the slices' trigger time")
	}
	if err := cs.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, fk, "web's rules removed", func(r string) bool { return !strings.Contains(r, "-d "+web+"/32") })
}

// TestSourceAfterAPIServerRestart: a change made while the source's
// watches were cut (the API server stopped) and after etcd compacted the
// history they would resume from (410 Gone) reaches the proxy once the
// API server is back: the informers relist.
func TestSourceAfterAPIServerRestart(t *testing.T) {
	cp := kubetest.Shared(t)
	cs, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	ns := namespace(t, cs)
	ctx := context.Background()
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, apiSlice("web-1", "web", time.Now(), "10.200.0.2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fk, _, _ := follow(t, cs)
	eventually(t, fk, "web's endpoint", func(r string) bool { return strings.Contains(r, "--to-destination 10.200.0.2:8080") })

	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := cp.StartAPIServer(startCtx); err != nil {
		t.Fatal(err)
	}
	// Many writes to other objects, then compaction: the slices informer's
	// resourceVersion is now older than etcd's history.
	for i := range 20 {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "filler-" + string(rune('a'+i))}}
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := cp.CompactEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if err := cp.StartAPIServer(startCtx); err != nil {
		t.Fatal(err)
	}
	es, err := cs.DiscoveryV1().EndpointSlices(ns).Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.Endpoints[0].Addresses = []string{"10.200.0.9"}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, fk, "the change made after the restart", func(r string) bool {
		return strings.Contains(r, "--to-destination 10.200.0.9:8080") && !strings.Contains(r, "10.200.0.2:8080") && strings.Contains(r, svc.Spec.ClusterIP)
	})
}

// TestLogUnreachable: a refused connection is logged once with the error,
// the recovery once, and requests still go through the wrapped transport.
func TestLogUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(`{"major":"1","minor":"34"}`)) }))
	addr := srv.Listener.Addr().String()
	srv.Close()
	var buf bytes.Buffer
	var mu sync.Mutex
	cfg := &rest.Config{Host: "http://" + addr}
	LogUnreachable(cfg, slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, nil)), time.Hour)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := cs.Discovery().ServerVersion(); err == nil {
			t.Fatal("a closed port answered")
		}
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken again: %v", addr, err)
	}
	srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"major":"1","minor":"34"}`))
	})}}
	srv.Start()
	defer srv.Close()
	if _, err := cs.Discovery().ServerVersion(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if strings.Count(out, "cannot reach the API server") != 1 || !strings.Contains(out, "connection refused") {
		t.Errorf("want one line about the refused connection, got:\n%s", out)
	}
	if !strings.Contains(out, "reachable again") || !strings.Contains(out, "failed_requests=3") {
		t.Errorf("want the recovery after 3 failed requests, got:\n%s", out)
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestSourceFollowsZone: endpoints hinted for the zone of the proxy's
// Node are the ones its rules use; relabelling the Node into another zone
// moves the rules to that zone's endpoint, and a Node without a zone
// label uses every endpoint.
func TestSourceFollowsZone(t *testing.T) {
	cs, err := kubetest.Shared(t).Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := namespace(t, cs)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "zoned-node", Labels: map[string]string{corev1.LabelTopologyZone: "zone-a"}}}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })
	fk, _, _ := followNode(t, cs, node.Name)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	es := apiSlice("web-a", svc.Name, time.Now(), "10.200.0.2", "10.200.1.2")
	es.Endpoints[0].Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}}
	es.Endpoints[1].Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-b"}}}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	only := func(want, not string) func(string) bool {
		return func(rules string) bool {
			return strings.Contains(rules, "--to-destination "+want+":8080") && !strings.Contains(rules, "--to-destination "+not+":8080")
		}
	}
	eventually(t, fk, "zone-a's endpoint only", only("10.200.0.2", "10.200.1.2"))
	relabel := func(zone string) {
		n, err := cs.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if zone == "" {
			delete(n.Labels, corev1.LabelTopologyZone)
		} else {
			n.Labels[corev1.LabelTopologyZone] = zone
		}
		if _, err := cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	relabel("zone-b")
	eventually(t, fk, "zone-b's endpoint only", only("10.200.1.2", "10.200.0.2"))
	relabel("")
	eventually(t, fk, "both endpoints", func(rules string) bool {
		return strings.Contains(rules, "--to-destination 10.200.0.2:8080") && strings.Contains(rules, "--to-destination 10.200.1.2:8080")
	})
}

// TestSourceFollowsServiceCIDRs: the API server's ServiceCIDR objects
// (its default one, made from --service-cluster-ip-range, and one added
// later) become the proxy's drops of unallocated service addresses; a
// deleted one goes.
func TestSourceFollowsServiceCIDRs(t *testing.T) {
	cs, err := kubetest.Shared(t).Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	fk, _, _ := followWith(t, cs, func(c *Config) { c.FollowServiceCIDRs = true })
	drop := func(cidr string) func(string) bool {
		return func(rules string) bool {
			return strings.Contains(rules, "-A PODNET-SERVICES -d "+cidr+` -m comment --comment "unallocated service IP" -j DROP`)
		}
	}
	def, err := cs.NetworkingV1().ServiceCIDRs().Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil || len(def.Spec.CIDRs) == 0 {
		t.Fatalf("the API server's default ServiceCIDR: %+v %v", def, err)
	}
	eventually(t, fk, "the default ServiceCIDR's drop", drop(def.Spec.CIDRs[0]))
	extra := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "podnet-test-extra"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.100.0.0/24"}}}
	if _, err := cs.NetworkingV1().ServiceCIDRs().Create(ctx, extra, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.NetworkingV1().ServiceCIDRs().Delete(context.Background(), extra.Name, metav1.DeleteOptions{})
	})
	eventually(t, fk, "the added ServiceCIDR's drop", drop("10.100.0.0/24"))
	if err := cs.NetworkingV1().ServiceCIDRs().Delete(ctx, extra.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, fk, "the deleted ServiceCIDR's drop gone", func(rules string) bool { return !drop("10.100.0.0/24")(rules) })
}
