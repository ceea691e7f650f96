package service

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
)

func nftOut(t *testing.T, ns *netns.NS, args ...string) string {
	t.Helper()
	out, err := execns.Output(context.Background(), ns, nil, "nft", args...)
	if err != nil {
		t.Fatalf("nft %v: %v", args, err)
	}
	return string(out)
}

func setLen(t *testing.T, ns *netns.NS, fam nftables.TableFamily, set string) int {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	must(t, err)
	es, err := c.GetSetElements(&nftables.Set{Table: &nftables.Table{Name: "podnet-proxy", Family: fam}, Name: set})
	must(t, err)
	return len(es)
}

// TestNftablesFullSyncAtScale: a full sync of 3000 Services × 5 endpoints
// puts every element into the kernel (element lists longer than one
// netlink attribute can hold must be split), and a partial sync of one
// Service changes exactly its elements.
func TestNftablesFullSyncAtScale(t *testing.T) {
	ns := nstest.New(t)
	p, err := New(Config{Backend: mustBackend(ModeNftables, ns), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
	must(t, err)
	t.Cleanup(func() { p.Cleanup(context.Background()) })
	svcs := manyServices(3000, 5)
	apply(t, p, svcs...)
	for set, want := range map[string]int{"ip-5": 3000, "ip-backends": 15000, "nodeport-5": 2000, "nodeport-backends": 10000, "hairpin": 15000, "cluster-masq": 3000, "nodeport-masq": 2000} {
		if got := setLen(t, ns, nftables.TableFamilyIPv4, set); got != want {
			t.Errorf("%s: %d elements, want %d", set, got, want)
		}
	}
	s := svcs[1234]
	s.Endpoints = s.Endpoints[:3]
	if res := apply(t, p, s); res.Full || res.Services != 1 {
		t.Errorf("partial sync: %+v", res)
	}
	for set, want := range map[string]int{"ip-5": 2999, "ip-3": 1, "ip-backends": 14998, "hairpin": 14998} {
		if got := setLen(t, ns, nftables.TableFamilyIPv4, set); got != want {
			t.Errorf("after the partial sync, %s: %d elements, want %d", set, got, want)
		}
	}
	if svcN, eps := p.Stats(); svcN != 3000 || eps != 14998 {
		t.Errorf("Stats: %d services, %d endpoints", svcN, eps)
	}
}

// TestNftablesCoexists: a full sync, a partial sync and Cleanup leave the
// node's other rules alone — an iptables-nft nat rule and another nftables
// table — and Cleanup leaves no table of the proxy's.
func TestNftablesCoexists(t *testing.T) {
	ns := nstest.New(t)
	ctx := context.Background()
	if _, err := execns.Output(ctx, ns, nil, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.9.0/24", "-j", "MASQUERADE"); err != nil {
		t.Fatal(err)
	}
	nftOut(t, ns, "add", "table", "ip", "other")
	nftOut(t, ns, "add", "chain", "ip", "other", "in", "{ type filter hook input priority 0; }")
	nftOut(t, ns, "add", "rule", "ip", "other", "in", "tcp", "dport", "22", "accept")
	p, err := New(Config{Backend: mustBackend(ModeNftables, ns), Families: []podnet.Family{podnet.IPv4, podnet.IPv6}})
	must(t, err)
	s := svc("web", "10.96.0.20", TCP, 80, []Endpoint{{Addr: ip("10.200.0.2"), Ready: true, Serving: true}})
	apply(t, p, s)
	s.Endpoints = nil
	apply(t, p, s)
	for _, want := range []string{"table ip podnet-proxy", "table ip6 podnet-proxy", "table ip other", "tcp dport 22 accept", "10.9.9.0/24"} {
		if got := nftOut(t, ns, "list", "ruleset"); !strings.Contains(got, want) {
			t.Errorf("after syncs: no %q in\n%s", want, got)
		}
	}
	must(t, p.Cleanup(ctx))
	got := nftOut(t, ns, "list", "ruleset")
	if strings.Contains(got, "podnet-proxy") {
		t.Errorf("Cleanup left a table:\n%s", got)
	}
	for _, want := range []string{"table ip other", "tcp dport 22 accept", "10.9.9.0/24"} {
		if !strings.Contains(got, want) {
			t.Errorf("after Cleanup: no %q in\n%s", want, got)
		}
	}
}

// TestNftablesSupported: the probe answers yes on this kernel and leaves
// nothing behind.
func TestNftablesSupported(t *testing.T) {
	ns := nstest.New(t)
	must(t, NftablesSupported(ns))
	if got := strings.TrimSpace(nftOut(t, ns, "list", "ruleset")); got != "" {
		t.Errorf("probe left:\n%s", got)
	}
}

// TestNftablesListable: nft itself reads back every kind of object the
// proxy writes (nft aborts on expressions it cannot print), and what it
// prints names the Services' addresses.
func TestNftablesListable(t *testing.T) {
	ns := nstest.New(t)
	p, err := New(Config{Backend: mustBackend(ModeNftables, ns), NodeName: "node0",
		Families: []podnet.Family{podnet.IPv4, podnet.IPv6}, ClusterCIDRs: []netip.Prefix{podCIDR, pfx("fd00:200::/48")}})
	must(t, err)
	t.Cleanup(func() { p.Cleanup(context.Background()) })
	eps := []Endpoint{{Addr: ip("10.200.0.2"), Ready: true, Serving: true, NodeName: "node0"}, {Addr: ip("10.200.1.2"), Ready: true, Serving: true, NodeName: "node1"},
		{Addr: ip("fd00:200::2"), Ready: true, Serving: true, NodeName: "node0"}}
	all := svc("all", "10.96.0.20", TCP, 80, eps)
	all.ClusterIPs = append(all.ClusterIPs, ip("fd00:96::20"))
	all.ExternalIPs = []netip.Addr{ip("203.0.113.7")}
	all.Ports[0].NodePort = 30080
	all.ExternalTrafficPolicy = PolicyLocal
	sticky := svc("sticky", "10.96.0.21", UDP, 53, eps)
	sticky.Affinity = AffinityClientIP
	empty := svc("empty", "10.96.0.22", TCP, 80, nil)
	empty.Ports[0].NodePort = 30081
	lb := svc("lb", "10.96.0.23", TCP, 443, eps)
	lb.LoadBalancerIPs = []netip.Addr{ip("203.0.113.70")}
	lb.LoadBalancerSourceRanges = []netip.Prefix{pfx("192.0.2.0/24")}
	apply(t, p, all, sticky, empty, lb)
	if ok, err := p.Verify(context.Background()); !ok || err != nil {
		t.Errorf("Verify of the tables just written: %v %v", ok, err)
	}
	got := nftOut(t, ns, "list", "ruleset")
	for _, want := range []string{"10.96.0.20 . tcp . 80", "fd00:96::20 . tcp . 80", "203.0.113.7 . tcp . 80", "tcp . 30080", "10.96.0.21 . udp . 53 : goto affinity-",
		"10.96.0.22 . tcp . 80", "tcp . 30081", "numgen random mod 2", "update @affinity-", "203.0.113.70 . tcp . 443 . 192.0.2.0/24"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in\n%s", want, got)
		}
	}
}

// TestNftElements: the elements read back name each Service's path in
// nft's notation, for both families, and a namespace without the proxy's
// tables has none.
func TestNftElements(t *testing.T) {
	ns := nstest.New(t)
	if es, err := NftElements(ns, ""); err != nil || len(es) != 0 {
		t.Fatalf("empty namespace: %v %v", es, err)
	}
	p, err := New(Config{Backend: mustBackend(ModeNftables, ns), Families: []podnet.Family{podnet.IPv4, podnet.IPv6}, ClusterCIDRs: []netip.Prefix{podCIDR}})
	must(t, err)
	t.Cleanup(func() { p.Cleanup(context.Background()) })
	s := svc("web", "10.96.0.20", TCP, 80, []Endpoint{{Addr: ip("10.200.0.2"), Ready: true, Serving: true}, {Addr: ip("fd00:200::2"), Ready: true, Serving: true}})
	s.ClusterIPs = append(s.ClusterIPs, ip("fd00:96::20"))
	s.Ports[0].NodePort = 30080
	sticky := svc("sticky", "10.96.0.21", UDP, 53, []Endpoint{{Addr: ip("10.200.0.3"), Ready: true, Serving: true}})
	sticky.Affinity = AffinityClientIP
	apply(t, p, s, sticky)
	es, err := NftElements(ns, "")
	must(t, err)
	var got []string
	for _, e := range es {
		got = append(got, e.String())
	}
	text := strings.Join(got, "\n")
	for _, want := range []string{
		"ip-1: 10.96.0.20 . tcp . 80",
		"ip-backends: 10.96.0.20 . tcp . 80 . 0 : 10.200.0.2 . 8080",
		"ip-backends: fd00:96::20 . tcp . 80 . 0 : fd00:200::2 . 8080",
		"nodeport-backends: tcp . 30080 . 0 : 10.200.0.2 . 8080",
		"hairpin: 10.200.0.2 . 10.200.0.2",
		"cluster-masq: 10.96.0.20 . tcp . 80",
		"ip-affinity: 10.96.0.21 . udp . 53 : goto affinity-",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("no %q in\n%s", want, text)
		}
	}
}

// TestNftablesDuplicateEntry: two Services claiming one cluster IP and
// port do not make the sync fail (nf_tables refuses a second element with
// the key): the first by name holds it, the other is skipped, and takes
// it over in the same sync that deletes the first.
func TestNftablesDuplicateEntry(t *testing.T) {
	ns := nstest.New(t)
	p, err := New(Config{Backend: mustBackend(ModeNftables, ns)})
	must(t, err)
	t.Cleanup(func() { p.Cleanup(context.Background()) })
	a := svc("a", "10.96.0.20", TCP, 80, []Endpoint{{Addr: ip("10.200.0.2"), Ready: true, Serving: true}})
	b := svc("b", "10.96.0.20", TCP, 80, []Endpoint{{Addr: ip("10.200.0.3"), Ready: true, Serving: true}})
	c := svc("c", "10.96.0.21", TCP, 80, []Endpoint{{Addr: ip("10.200.0.4"), Ready: true, Serving: true}})
	backendOf := func() string {
		t.Helper()
		es, err := NftElements(ns, "")
		must(t, err)
		var got []string
		for _, e := range es {
			if e.Set == "ip-backends" && strings.HasPrefix(e.Key, "10.96.0.20 ") {
				got = append(got, e.Value)
			}
		}
		return strings.Join(got, ",")
	}
	apply(t, p, a, b, c)
	if got := backendOf(); got != "10.200.0.2 . 8080" {
		t.Fatalf("after the full sync: %q, want a's endpoint alone", got)
	}
	// A partial sync with the conflict in it works too.
	b.Endpoints[0].Addr = ip("10.200.0.5")
	apply(t, p, b)
	if got := backendOf(); got != "10.200.0.2 . 8080" {
		t.Fatalf("after b changed: %q, want a's endpoint", got)
	}
	p.Delete(a.Name)
	if res := apply(t, p); res.Full || res.Services != 2 {
		t.Errorf("deleting a: %+v, want a partial sync of a and b", res)
	}
	if got := backendOf(); got != "10.200.0.5 . 8080" {
		t.Errorf("b did not take over in the same sync: %q", got)
	}
}

// TestNftablesRunRepairsTampering: Run reads the table back every sync
// period; a map of the proxy's flushed by hand (nft flush map) breaks the
// Service until the next period's full sync repairs it.
func TestNftablesRunRepairsTampering(t *testing.T) {
	c := newCluster(t, ModeNftables)
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	must(t, p.Update(svc("web", "10.96.0.20", TCP, 80, c.endpoints("pod1a"))))
	ctx, cancel := context.WithCancel(context.Background())
	reasons := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx, RunConfig{SyncPeriod: 300 * time.Millisecond, OnSync: func(r SyncResult, err error) {
			if err == nil && r.Full {
				reasons <- r.Reason
			}
		}})
	}()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, client.ns, "tcp", "10.96.0.20:80", func(r probe.Reply) bool { return r.Name == "pod1a" })
	if _, err := execns.Output(context.Background(), c.node0, nil, "nft", "flush", "map", "ip", "podnet-proxy", "ip-backends"); err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Ask(client.ns, "tcp", netip.MustParseAddrPort("10.96.0.20:80"), time.Second); err == nil {
		t.Fatal("the Service still answers with its backends flushed: the test cannot see a repair")
	}
	eventually(t, client.ns, "tcp", "10.96.0.20:80", func(r probe.Reply) bool { return r.Name == "pod1a" })
	deadline := time.After(5 * time.Second)
	for {
		select {
		case r := <-reasons:
			if r == "tables differ from what was written" {
				return
			}
		case <-deadline:
			t.Fatal("no full sync with reason \"tables differ from what was written\"")
		}
	}
}
