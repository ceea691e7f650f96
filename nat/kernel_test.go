package nat

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
)

func TestMain(m *testing.M) { nstest.Main(m) }

var (
	p4 = netip.MustParsePrefix
	a4 = netip.MustParseAddr
)

// saveText returns the namespace's rules of both families.
func saveText(t *testing.T, k *iptables.Kernel) string {
	t.Helper()
	var b strings.Builder
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		rs, err := k.SaveAll(context.Background(), f)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(rs.String())
	}
	return b.String()
}

func chainNames(t *iptables.TableRules) []string {
	var n []string
	for _, c := range t.Chains {
		n = append(n, c.Name)
	}
	return n
}

// ---- traffic ----

// topo is pod —(veth 10.200.0.0/24)— node —(veth 10.99.0.0/24)— outside.
type topo struct {
	pod, node, outside *netns.NS
	podAddr            netip.Addr
}

func newTopo(t *testing.T) topo {
	t.Helper()
	pair := nstest.NewPair(t) // node = A 10.99.0.1, outside = B 10.99.0.2
	tp := topo{pod: nstest.New(t), node: pair.A, outside: pair.B, podAddr: a4("10.200.0.2")}
	hn, err := nl.Handle(tp.node)
	if err != nil {
		t.Fatal(err)
	}
	defer hn.Close()
	hp, err := nl.Handle(tp.pod)
	if err != nil {
		t.Fatal(err)
	}
	defer hp.Close()
	la := netlink.NewLinkAttrs()
	la.Name = "vpod"
	if err := hn.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(tp.pod.Fd())}); err != nil {
		t.Fatal(err)
	}
	addr := func(h *netlink.Handle, dev, cidr string) netlink.Link {
		l, err := h.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(cidr)
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	addr(hn, "vpod", "10.200.0.1/24")
	pl := addr(hp, "eth0", "10.200.0.2/24")
	if err := hp.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: net.ParseIP("10.200.0.1")}); err != nil {
		t.Fatal(err)
	}
	if err := sysctl.Set(tp.node, "net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	return tp
}

// routeBack lets the outside namespace answer pod addresses directly (so
// that without masquerade it sees — and can answer — the pod address).
func (tp topo) routeBack(t *testing.T) {
	h, err := nl.Handle(tp.outside)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	_, dst, _ := net.ParseCIDR("10.200.0.0/24")
	if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP("10.99.0.1")}); err != nil {
		t.Fatal(err)
	}
}

func ask(t *testing.T, ns *netns.NS, network string, dst netip.AddrPort) probe.Reply {
	t.Helper()
	r, err := probe.Poll(ns, network, dst, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestMasqueradeTraffic is the masquerade experiment: with the network's
// masquerade rules a server outside sees the node's address, without them
// the pod's; conntrack shows the matching tuples.
func TestMasqueradeTraffic(t *testing.T) {
	tp := newTopo(t)
	tp.routeBack(t)
	srv, err := probe.Serve(tp.outside, netip.MustParseAddrPort("10.99.0.2:0"), "outside")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	k := iptables.NewKernel(tp.node)
	m := NetworkMasquerade{Network: "podnet-test", Subnets: []netip.Prefix{p4("10.200.0.0/24"), p4("fd00:200::/64")}}

	if r := ask(t, tp.pod, "tcp", srv.Addr); r.Source.Addr() != tp.podAddr {
		t.Fatalf("without masquerade the server saw %v, want the pod address", r.Source)
	}
	for range 2 { // idempotent
		if err := m.Ensure(ctx, IPTables(k)); err != nil {
			t.Fatal(err)
		}
	}
	nat, _ := k.Save(ctx, iptables.IPv4, iptables.TableNAT)
	if c := nat.Chain(m.Chain()); c == nil || len(c.Rules) != 2 || len(nat.Chain("POSTROUTING").Rules) != 1 {
		t.Fatalf("masquerade rules: %v %v", chainNames(nat), nat.Chain("POSTROUTING").Rules)
	}
	if nat6, _ := k.Save(ctx, iptables.IPv6, iptables.TableNAT); nat6.Chain(m.Chain()) == nil {
		t.Errorf("no IPv6 masquerade chain")
	}
	r := ask(t, tp.pod, "tcp", srv.Addr)
	if r.Source.Addr() != a4("10.99.0.1") {
		t.Fatalf("with masquerade the server saw %v, want 10.99.0.1", r.Source)
	}
	flows, err := conntrack.List(ctx, tp.node, conntrack.Filter{Protocol: conntrack.TCP, OrigSrc: tp.podAddr, OrigDst: a4("10.99.0.2")}.Match)
	if err != nil {
		t.Fatal(err)
	}
	var seen bool
	for _, fl := range flows {
		t.Logf("conntrack: %s", fl)
		if fl.Orig.SrcPort != 0 && fl.Reply.Dst == a4("10.99.0.1") && fl.Reply.DstPort == r.Source.Port() && fl.Reply.Src == a4("10.99.0.2") {
			seen = true
		}
	}
	if !seen {
		t.Fatalf("no conntrack flow src=10.200.0.2 dst=10.99.0.2 … reply dst=10.99.0.1 dport=%d", r.Source.Port())
	}
	// Multicast is not masqueraded: its RETURN rule is first.
	if first, _ := iptables.ParseRule(iptables.IPv4, nat.Chain(m.Chain()).Rules[0]); first.Destination.Prefix != p4("224.0.0.0/4") {
		t.Errorf("first rule %v does not exclude multicast", first)
	}

	for range 2 {
		if err := m.Delete(ctx, IPTables(k)); err != nil {
			t.Fatal(err)
		}
	}
	if got := saveText(t, k); strings.Contains(got, "PODNET") {
		t.Fatalf("rules left after Delete:\n%s", got)
	}
	if r := ask(t, tp.pod, "tcp", srv.Addr); r.Source.Addr() != tp.podAddr {
		t.Fatalf("after Delete the server saw %v, want the pod address", r.Source)
	}
}

// TestHostPortsTraffic: a host port on the node reaches the pod; Delete
// removes every rule.
func TestHostPortsTraffic(t *testing.T) {
	tp := newTopo(t)
	srv, err := probe.Serve(tp.pod, netip.MustParseAddrPort("10.200.0.2:0"), "pod")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	k := iptables.NewKernel(tp.node)
	hp := HostPorts{}
	maps := []HostPort{{Protocol: iptables.TCP, HostPort: 8080, Pod: srv.Addr}, {Protocol: iptables.UDP, HostPort: 8080, Pod: srv.Addr}}
	for range 2 {
		if err := hp.Apply(ctx, k, maps); err != nil {
			t.Fatal(err)
		}
	}
	for _, network := range []string{"tcp", "udp"} {
		r := ask(t, tp.outside, network, netip.MustParseAddrPort("10.99.0.1:8080"))
		if r.Name != "pod" || r.Source.Addr() != a4("10.99.0.2") {
			t.Errorf("%s host port: %+v", network, r)
		}
	}
	// Hairpin: the pod reaches itself through the host port, masqueraded.
	if r := ask(t, tp.pod, "tcp", netip.MustParseAddrPort("10.99.0.1:8080")); r.Name != "pod" || r.Source.Addr() == tp.podAddr {
		t.Errorf("hairpin: %+v (want a masqueraded source)", r)
	}
	if err := hp.Delete(ctx, k); err != nil {
		t.Fatal(err)
	}
	if got := saveText(t, k); strings.Contains(got, "PODNET") {
		t.Errorf("left:\n%s", got)
	}
}

// TestMasqueradeEnsureConverges: on a Kernel, Ensure reads nf_tables first
// and must still see a rule set that is complete but not what is asked
// for: another subnet, another --random-fully.
func TestMasqueradeEnsureConverges(t *testing.T) {
	ns := nstest.New(t)
	k := iptables.NewKernel(ns)
	ctx := context.Background()
	for _, m := range []NetworkMasquerade{
		{Network: "n", Subnets: []netip.Prefix{p4("10.200.0.0/24"), p4("fd00:200::/64")}},
		{Network: "n", Subnets: []netip.Prefix{p4("10.200.0.0/16"), p4("fd00:200::/64")}},
		{Network: "n", Subnets: []netip.Prefix{p4("10.200.0.0/16"), p4("fd00:200::/64")}, RandomFully: true},
		{Network: "n", Subnets: []netip.Prefix{p4("10.200.0.0/16"), p4("fd00:201::/64")}, RandomFully: true},
		{Network: "n", Subnets: []netip.Prefix{p4("10.200.0.0/16"), p4("fd00:201::/64")}},
		{Network: "n", Subnets: []netip.Prefix{p4("10.200.0.0/20"), p4("fd00:201::/64")}},
	} {
		if err := m.Ensure(ctx, IPTables(k)); err != nil {
			t.Fatal(err)
		}
		if err := m.Check(ctx, IPTables(k)); err != nil {
			t.Errorf("after Ensure of %+v: %v", m, err)
		}
		if !m.present(ns) {
			t.Errorf("the nf_tables view does not recognise the rules of %+v it just wrote", m)
		}
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			nat, err := k.Save(ctx, f, iptables.TableNAT)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(nat.Chain("POSTROUTING").Rules); n != 1 {
				t.Errorf("%v after Ensure of %+v: %d POSTROUTING rules, want 1", f, m, n)
			}
		}
	}
	for _, s := range []string{"10.200.0.0/21", "10.200.0.0/24", "10.200.0.0/16"} {
		other := NetworkMasquerade{Network: "n", Subnets: []netip.Prefix{p4(s), p4("fd00:201::/64")}}
		if other.present(ns) {
			t.Errorf("the nf_tables view took a /20 rule set for %s", s)
		}
	}
}
