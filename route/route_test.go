package route_test

import (
	"errors"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

// ipRoute runs `ip ARGS` inside ns and returns its output.
func ipRoute(t *testing.T, ns *netns.NS, args ...string) string {
	t.Helper()
	var out []byte
	err := ns.Do(func() error {
		var err error
		out, err = exec.Command("ip", args...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
	return string(out)
}

func TestCreateEnsureDelete(t *testing.T) {
	p := nstest.NewPair(t)
	r := route.Route{Dst: pfx("10.200.1.0/24"), Gateway: addr("10.99.0.2")}
	if err := route.Create(p.A, r); err != nil {
		t.Fatal(err)
	}
	if err := route.Create(p.A, r); !errors.Is(err, route.ErrExist) {
		t.Fatalf("second Create: %v, want ErrExist", err)
	}
	if err := route.Ensure(p.A, r); err != nil {
		t.Fatal(err)
	}
	if got := ipRoute(t, p.A, "route", "show", "10.200.1.0/24"); !strings.Contains(got, "10.200.1.0/24 via 10.99.0.2 dev eth0") {
		t.Fatalf("ip route show: %q", got)
	}
	// Ensure converges a route whose next hop changed.
	r.Gateway = addr("10.99.0.3")
	if err := route.Ensure(p.A, r); err != nil {
		t.Fatal(err)
	}
	if got := ipRoute(t, p.A, "route", "show", "10.200.1.0/24"); !strings.Contains(got, "via 10.99.0.3") || strings.Contains(got, "10.99.0.2") {
		t.Fatalf("after Ensure: %q", got)
	}
	if err := route.Delete(p.A, r); err != nil {
		t.Fatal(err)
	}
	if got := ipRoute(t, p.A, "route", "show", "10.200.1.0/24"); got != "" {
		t.Fatalf("after Delete: %q", got)
	}
	if err := route.Delete(p.A, r); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
}

// TestDefaultRouteCarriesTraffic gives B a default route through A and
// checks a packet to an address only A owns gets an answer.
func TestDefaultRouteCarriesTraffic(t *testing.T) {
	p := nstest.NewPair(t)
	// 10.32.0.1 lives on A's loopback, off B's subnet.
	if got := ipRoute(t, p.A, "addr", "add", "10.32.0.1/32", "dev", "lo"); got != "" {
		t.Fatal(got)
	}
	if _, err := probe.Ping(p.B, addr("10.32.0.1"), 300*time.Millisecond); err == nil {
		t.Fatal("reachable before any route")
	}
	if err := route.EnsureDefault(p.B, p.AddrA.Addr(), "eth0"); err != nil {
		t.Fatal(err)
	}
	if got := ipRoute(t, p.B, "route", "show", "default"); !strings.Contains(got, "default via 10.99.0.1 dev eth0") {
		t.Fatalf("ip route show default: %q", got)
	}
	if _, err := probe.Ping(p.B, addr("10.32.0.1"), 3*time.Second); err != nil {
		t.Fatalf("through the default route: %v", err)
	}
}

func TestSync(t *testing.T) {
	p := nstest.NewPair(t)
	node := p.A
	// A route somebody else owns, with a destination Sync will also want.
	foreign := route.Route{Dst: pfx("10.200.9.0/24"), Gateway: addr("10.99.0.9")}
	if err := route.Create(node, foreign); err != nil {
		t.Fatal(err)
	}
	before := ipRoute(t, node, "route", "show", "table", "all")

	desired := []route.Route{
		{Dst: pfx("10.200.1.0/24"), Gateway: addr("10.99.0.2")},
		{Dst: pfx("10.200.2.0/24"), Gateway: addr("10.99.0.3")},
		{Dst: pfx("10.200.3.0/24"), Gateway: addr("10.99.0.4"), Table: 100},
		{Dst: pfx("fd00:200:1::/64"), Dev: "eth0"},
	}
	res, err := route.Sync(node, route.ProtocolPodnet, desired)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Added) != 4 || len(res.Removed) != 0 {
		t.Fatalf("first Sync: %+v", res)
	}
	owned := ipRoute(t, node, "route", "show", "table", "all", "proto", "180")
	for _, want := range []string{"10.200.1.0/24 via 10.99.0.2", "10.200.2.0/24 via 10.99.0.3", "10.200.3.0/24 via 10.99.0.4 dev eth0 table 100"} {
		if !strings.Contains(owned, want) {
			t.Errorf("owned routes lack %q:\n%s", want, owned)
		}
	}
	owned6 := ipRoute(t, node, "-6", "route", "show", "proto", "180")
	if !strings.Contains(owned6, "fd00:200:1::/64 dev eth0") {
		t.Errorf("owned IPv6 routes: %q", owned6)
	}

	// Unchanged: nothing to do.
	res, err = route.Sync(node, route.ProtocolPodnet, desired)
	if err != nil || len(res.Added)+len(res.Removed) != 0 {
		t.Fatalf("idempotent Sync: %+v, %v", res, err)
	}

	// A node left, another moved; a desired route clashes with the foreign one.
	desired = []route.Route{
		{Dst: pfx("10.200.1.0/24"), Gateway: addr("10.99.0.7")},
		{Dst: pfx("10.200.9.0/24"), Gateway: addr("10.99.0.8")},
	}
	res, err = route.Sync(node, route.ProtocolPodnet, desired)
	if !errors.Is(err, route.ErrExist) || !strings.Contains(err.Error(), "10.200.9.0/24") {
		t.Fatalf("clash with a foreign route: %v, want ErrExist naming it", err)
	}
	if len(res.Added) != 1 || len(res.Removed) != 3 {
		t.Fatalf("second Sync: added %v removed %v", res.Added, res.Removed)
	}
	list, err := route.List(node, route.Filter{Table: route.AllTables, Protocol: route.ProtocolPodnet})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Dst != pfx("10.200.1.0/24") || list[0].Gateway != addr("10.99.0.7") {
		t.Fatalf("owned after second Sync: %v", list)
	}
	// Everything not owned is as it was, byte for byte.
	if err := route.Delete(node, desired[0]); err != nil {
		t.Fatal(err)
	}
	if after := ipRoute(t, node, "route", "show", "table", "all"); after != before {
		t.Fatalf("foreign routes changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestForwardingPerNamespace: a namespace's forwarding is its own. A new
// namespace inherits IPv4 forwarding from the initial one (on on every
// Docker host and Kubernetes node), so the test sets b's value itself
// rather than assuming a pristine host, and checks both directions.
func TestForwardingPerNamespace(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	for _, fam := range []route.Family{route.IPv4, route.IPv6} {
		for _, bOn := range []bool{true, false} { // a ends on, for ip netconf below
			if err := route.SetForwarding(b, fam, bOn); err != nil {
				t.Fatal(err)
			}
			if err := route.SetForwarding(a, fam, !bOn); err != nil {
				t.Fatal(err)
			}
			if on, err := route.Forwarding(a, fam); err != nil || on == bOn {
				t.Fatalf("%v forwarding in a after setting it %v: %v, %v", fam, !bOn, on, err)
			}
			if on, err := route.Forwarding(b, fam); err != nil || on != bOn {
				t.Fatalf("%v forwarding in b = %v, %v after setting a %v; want %v (leaked)", fam, on, err, !bOn, bOn)
			}
		}
	}
	if got := strings.TrimSpace(ipRoute(t, a, "netconf", "show", "dev", "lo")); !strings.Contains(got, "forwarding on") {
		t.Errorf("ip netconf: %q", got)
	}
	// And off again, as the sysctl shows it.
	for _, fam := range []route.Family{route.IPv4, route.IPv6} {
		if err := route.SetForwarding(a, fam, false); err != nil {
			t.Fatal(err)
		}
		key := map[route.Family]string{route.IPv4: "net/ipv4/ip_forward", route.IPv6: "net/ipv6/conf/all/forwarding"}[fam]
		if v, err := sysctl.Get(a, key); err != nil || v != "0" {
			t.Errorf("%v forwarding after SetForwarding off: %s = %q, %v", fam, key, v, err)
		}
		if on, err := route.Forwarding(a, fam); err != nil || on {
			t.Errorf("%v Forwarding after SetForwarding off: %v, %v", fam, on, err)
		}
	}
	if err := route.SetForwarding(a, 5, true); !errors.Is(err, route.ErrInvalid) {
		t.Errorf("family 5: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	ns := nstest.New(t)
	before, err := route.List(ns, route.Filter{Table: route.AllTables})
	if err != nil {
		t.Fatal(err)
	}
	bad := []route.Route{
		{},
		{Dst: pfx("10.200.1.5/24"), Dev: "lo"},
		{Dst: pfx("10.200.1.0/24")},
		{Dst: pfx("10.200.1.0/24"), Gateway: addr("fd00::1")},
		{Dst: pfx("10.200.1.0/24"), Dev: "lo", Src: addr("fd00::1")},
		{Dst: pfx("10.200.1.0/24"), Dev: "a/b"},
		{Dst: pfx("10.200.1.0/24"), Dev: "lo", Metric: -1},
	}
	for _, r := range bad {
		for name, op := range map[string]func(*netns.NS, route.Route) error{
			"Create": route.Create, "Replace": route.Replace, "Ensure": route.Ensure, "Delete": route.Delete,
		} {
			if err := op(ns, r); !errors.Is(err, route.ErrInvalid) {
				t.Errorf("%s(%+v) = %v, want ErrInvalid", name, r, err)
			}
		}
	}
	if _, err := route.Sync(ns, route.ProtocolPodnet, bad[1:2]); !errors.Is(err, route.ErrInvalid) {
		t.Errorf("Sync with a bad route: %v", err)
	}
	dup := []route.Route{{Dst: pfx("10.1.0.0/16"), Dev: "lo"}, {Dst: pfx("10.1.0.0/16"), Dev: "lo"}}
	if _, err := route.Sync(ns, route.ProtocolPodnet, dup); !errors.Is(err, route.ErrInvalid) {
		t.Errorf("Sync with duplicates: %v", err)
	}
	if _, err := route.Sync(ns, route.ProtocolKernel, nil); !errors.Is(err, route.ErrInvalid) {
		t.Errorf("Sync as kernel: %v", err)
	}
	if err := route.Create(ns, route.Route{Dst: pfx("10.1.0.0/16"), Dev: "nosuch"}); !errors.Is(err, route.ErrNotFound) {
		t.Errorf("missing device: %v, want ErrNotFound", err)
	}
	after, _ := route.List(ns, route.Filter{Table: route.AllTables})
	if !slices.Equal(before, after) {
		t.Errorf("bad input changed routes: %v → %v", before, after)
	}
}

func TestGet(t *testing.T) {
	p := nstest.NewPair(t)
	if err := route.Create(p.A, route.Route{Dst: pfx("10.200.1.0/24"), Gateway: addr("10.99.0.2")}); err != nil {
		t.Fatal(err)
	}
	r, err := route.Get(p.A, addr("10.200.1.7"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Gateway != addr("10.99.0.2") || r.Dev != "eth0" {
		t.Fatalf("Get = %v", r)
	}
	if r, err := route.Get(p.A, addr("192.0.2.1")); err == nil {
		t.Fatalf("Get of an unroutable address = %v, want an error", r)
	}
}
