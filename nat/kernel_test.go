package nat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/internal/probe"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

func restoreRaw(t *testing.T, ns *netns.NS, f Family, text string) {
	t.Helper()
	if _, err := execns.Output(context.Background(), ns, strings.NewReader(text), binary(f, "-restore"), "-w", "--noflush"); err != nil {
		t.Fatalf("seed rules: %v", err)
	}
}

func saveText(t *testing.T, ns *netns.NS, f Family) string {
	t.Helper()
	out, err := execns.Output(context.Background(), ns, nil, binary(f, "-save"))
	if err != nil {
		t.Fatal(err)
	}
	// Drop the timestamps and counters so two saves compare.
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			l = l[:strings.LastIndex(l, " ")]
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// TestKernelRoundTrip: render → iptables-restore → iptables-save → parse
// equals the model, for every match and target, IPv4 and IPv6.
func TestKernelRoundTrip(t *testing.T) {
	ns := nstest.New(t)
	k := NewKernel(ns)
	ctx := context.Background()
	for _, f := range []Family{IPv4, IPv6} {
		var natRules, filterR []Rule
		var natWant, filterWant []string
		for _, tc := range sampleRules {
			if tc.f == f {
				natRules, natWant = append(natRules, tc.rule), append(natWant, tc.want)
			}
		}
		for _, tc := range filterRules {
			if tc.f == f {
				filterR, filterWant = append(filterR, tc.rule), append(filterWant, tc.want)
			}
		}
		tx := NewTransaction().
			Declare(Chain{f, TableNAT, "PODNET-B"}).
			Declare(Chain{f, TableNAT, "PODNET-A"}, natRules...).
			Declare(Chain{f, TableFilter, "PODNET-F2"}).
			Declare(Chain{f, TableFilter, "PODNET-F"}, filterR...)
		if err := k.Run(ctx, tx); err != nil {
			t.Fatalf("%v: %v", f, err)
		}
		for _, c := range []struct {
			table Table
			rules []Rule
			want  []string
		}{{TableNAT, natRules, natWant}, {TableFilter, filterR, filterWant}} {
			tr, err := k.Save(ctx, f, c.table)
			if err != nil {
				t.Fatal(err)
			}
			name := map[Table]string{TableNAT: "PODNET-A", TableFilter: "PODNET-F"}[c.table]
			saved := tr.Chain(name)
			if saved == nil || !reflect.DeepEqual(saved.Rules, c.want) {
				t.Fatalf("%v %s: saved rules\n%q\nwant\n%q", f, c.table, saved, c.want)
			}
			parsed, err := saved.Parse(f)
			if err != nil {
				t.Fatal(err)
			}
			for i := range parsed {
				if strings.Contains(c.want[i], "statistic") {
					continue // quantized probability; text compared above
				}
				if !reflect.DeepEqual(normRule(parsed[i]), normRule(c.rules[i])) {
					t.Errorf("%v: parsed %#v\nwant %#v", f, parsed[i], c.rules[i])
				}
			}
		}
	}
}

// TestKernelAtomicity: a transaction with one rule the kernel rejects
// changes nothing; foreign chains and rules survive every transaction byte
// for byte; Prune removes only stale owned chains.
func TestKernelAtomicity(t *testing.T) {
	ns := nstest.New(t)
	k := NewKernel(ns)
	ctx := context.Background()
	for _, f := range []Family{IPv4, IPv6} {
		src := "10.50.0.0/16"
		if f == IPv6 {
			src = "fd50::/64"
		}
		restoreRaw(t, ns, f, fmt.Sprintf(`*nat
:FOREIGN - [0:0]
-A FOREIGN -s %[1]s -m comment --comment "keep me" -j RETURN
-A POSTROUTING -s %[1]s -j FOREIGN
-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT
COMMIT
*filter
:FOREIGN-F - [0:0]
-A FOREIGN-F -j ACCEPT
-A FORWARD -j FOREIGN-F
COMMIT
`, src))
	}
	foreign := func(f Family) string {
		var keep []string
		for _, l := range strings.Split(saveText(t, ns, f), "\n") {
			if !strings.Contains(l, "PODNET") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	before := map[Family]string{IPv4: foreign(IPv4), IPv6: foreign(IPv6)}
	check := func(step string) {
		t.Helper()
		for _, f := range []Family{IPv4, IPv6} {
			if got := foreign(f); got != before[f] {
				t.Fatalf("%s: foreign rules changed (%v):\n%s\nwant\n%s", step, f, got, before[f])
			}
		}
	}

	good := func(f Family, n int) *Transaction {
		tx := NewTransaction()
		for i := range n {
			tx.Declare(Chain{f, TableNAT, fmt.Sprintf("PODNET-S%d", i)}, Rule{Protocol: TCP, Target: Return})
			tx.EnsureRule(Chain{f, TableNAT, "PREROUTING"}, true, Rule{Protocol: TCP, Matches: []Match{Ports{Dst: Port(uint16(1000 + i))}}, Target: Jump(fmt.Sprintf("PODNET-S%d", i))})
		}
		return tx.Prune(f, TableNAT, "PODNET-")
	}
	for _, f := range []Family{IPv4, IPv6} {
		if err := k.Run(ctx, good(f, 3)); err != nil {
			t.Fatal(err)
		}
	}
	check("after declaring 3 chains")
	snap := saveText(t, ns, IPv4) + saveText(t, ns, IPv6)

	// DNAT is not valid in the filter table: the kernel rejects that rule,
	// and with it the whole transaction.
	// The last rule appends to a chain that does not exist: restore
	// rejects it, and with it the whole transaction.
	bad := good(IPv4, 1)
	bad.Declare(Chain{IPv4, TableNAT, "PODNET-NEW"}, Rule{Target: Return})
	bad.Append(Chain{IPv4, TableNAT, "PODNET-MISSING"}, Rule{Target: Return})
	if err := k.Run(ctx, bad); err == nil {
		t.Fatal("transaction with a rule in a missing chain succeeded")
	} else {
		t.Logf("rejected as expected: %v", err)
	}
	// NAT targets outside the nat table are refused before anything runs.
	if err := k.Run(ctx, good(IPv4, 1).Declare(Chain{IPv4, TableFilter, "PODNET-BAD"}, Rule{Target: DNAT{To: a4("10.0.0.1")}})); !errors.Is(err, ErrInvalid) {
		t.Fatalf("DNAT in filter: err = %v, want ErrInvalid", err)
	}
	// A jump to a chain that does not exist.
	bad6 := good(IPv6, 1).Append(Chain{IPv6, TableNAT, "PODNET-S0"}, Rule{Target: Jump("PODNET-NOWHERE")})
	if err := k.Run(ctx, bad6); err == nil {
		t.Fatal("transaction with a jump to a missing chain succeeded")
	}
	if got := saveText(t, ns, IPv4) + saveText(t, ns, IPv6); got != snap {
		t.Logf("%q", got)
		t.Fatalf("failed transactions changed the tables:\n%s\nwant\n%s", got, snap)
	}

	// Prune: from 3 chains down to 1; the stale chains and their jumps go.
	for _, f := range []Family{IPv4, IPv6} {
		if err := k.Run(ctx, good(f, 1)); err != nil {
			t.Fatal(err)
		}
		nat, _ := k.Save(ctx, f, TableNAT)
		if nat.Chain("PODNET-S1") != nil || nat.Chain("PODNET-S2") != nil || nat.Chain("PODNET-S0") == nil {
			t.Errorf("%v: prune left %v", f, chainNames(nat))
		}
		if pre := nat.Chain("PREROUTING").Rules; len(pre) != 2 {
			t.Errorf("%v: PREROUTING = %q, want our jump and the foreign rule", f, pre)
		}
	}
	check("after prune")
	// Re-running is idempotent: EnsureRule does not duplicate.
	if err := k.Run(ctx, good(IPv4, 1)); err != nil {
		t.Fatal(err)
	}
	if nat, _ := k.Save(ctx, IPv4, TableNAT); len(nat.Chain("PREROUTING").Rules) != 2 {
		t.Errorf("EnsureRule duplicated: %q", nat.Chain("PREROUTING").Rules)
	}
	// Clean up everything we own; foreign state is what it was.
	for _, f := range []Family{IPv4, IPv6} {
		if err := k.Run(ctx, NewTransaction().Prune(f, TableNAT, "PODNET-")); err != nil {
			t.Fatal(err)
		}
	}
	if got := saveText(t, ns, IPv4); strings.Contains(got, "PODNET") {
		t.Errorf("owned rules left:\n%s", got)
	}
	check("after cleanup")
}

func chainNames(t *TableRules) []string {
	var n []string
	for _, c := range t.Chains {
		n = append(n, c.Name)
	}
	return n
}

// TestKernelSingleEdits covers the go-iptables path.
func TestKernelSingleEdits(t *testing.T) {
	ns := nstest.New(t)
	k := NewKernel(ns)
	ctx := context.Background()
	c := Chain{IPv4, TableNAT, "POSTROUTING"}
	r := Rule{Source: Addr{Prefix: p4("10.9.0.0/16")}, Target: Masquerade{}}
	for range 2 {
		if err := k.EnsureRule(ctx, c, true, r); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := k.Check(ctx, c, r); err != nil || !ok {
		t.Fatalf("Check = %v, %v", ok, err)
	}
	if nat, _ := k.Save(ctx, IPv4, TableNAT); len(nat.Chain("POSTROUTING").Rules) != 1 {
		t.Fatalf("EnsureRule twice: %q", nat.Chain("POSTROUTING").Rules)
	}
	for range 2 {
		if err := k.DeleteRule(ctx, c, r); err != nil {
			t.Fatal(err)
		}
	}
	if ok, _ := k.Check(ctx, c, r); ok {
		t.Fatal("rule still there")
	}
	if err := k.DeleteRule(ctx, Chain{IPv4, TableNAT, "PODNET-NONE"}, r); err != nil {
		t.Errorf("DeleteRule in a missing chain: %v", err)
	}
}

// TestRefChainsKernel: the reference bridge plugin's layout is found and
// removed; a portmap chain and another container's chain stay.
func TestRefChainsKernel(t *testing.T) {
	ns := nstest.New(t)
	k := NewKernel(ns)
	ctx := context.Background()
	c1, c2 := RefChainName("cbr", "c1"), RefChainName("cbr", "c2")
	rule := func(chain, spec, cid string) string {
		return fmt.Sprintf("-A %s %s -m comment --comment %q\n", chain, spec, RefComment("cbr", cid))
	}
	restoreRaw(t, ns, IPv4, "*nat\n:"+c1+" - [0:0]\n:"+c2+" - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n"+
		rule(c1, "-d 10.88.0.0/16 -j ACCEPT", "c1")+rule(c1, "! -d 224.0.0.0/4 -j MASQUERADE", "c1")+
		rule("POSTROUTING", "-s 10.88.0.2 -j "+c1, "c1")+
		rule(c2, "-d 10.88.0.0/16 -j ACCEPT", "c2")+rule("POSTROUTING", "-s 10.88.0.3 -j "+c2, "c2")+
		"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\nCOMMIT\n")
	found, err := FindRefChains(ctx, k, "cbr", "c1")
	if err != nil || len(found) != 1 || found[0].Chain.Name != c1 || len(found[0].Jumps) != 1 {
		t.Fatalf("FindRefChains = %+v, %v", found, err)
	}
	if n, err := DeleteRefChains(ctx, k, "cbr", "c1"); err != nil || n != 1 {
		t.Fatalf("DeleteRefChains = %d, %v", n, err)
	}
	nat, _ := k.Save(ctx, IPv4, TableNAT)
	if nat.Chain(c1) != nil || nat.Chain(c2) == nil || nat.Chain("CNI-HOSTPORT-DNAT") == nil || len(nat.Chain("POSTROUTING").Rules) != 1 {
		t.Fatalf("after delete: chains %v, POSTROUTING %q", chainNames(nat), nat.Chain("POSTROUTING").Rules)
	}
	if n, err := DeleteRefChains(ctx, k, "cbr", "c1"); err != nil || n != 0 {
		t.Fatalf("second DeleteRefChains = %d, %v", n, err)
	}
	if n, err := DeleteRefChains(ctx, k, "cbr", ""); err != nil || n != 1 {
		t.Fatalf("DeleteRefChains(all) = %d, %v", n, err)
	}
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
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, err := probe.Ask(ns, network, dst, 500*time.Millisecond)
		if err == nil {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: %v", network, dst, err)
		}
	}
}

// TestMasqueradeTraffic is the article's experiment: with the network's
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
	k := NewKernel(tp.node)
	m := NetworkMasquerade{Network: "podnet-test", Subnets: []netip.Prefix{p4("10.200.0.0/24"), p4("fd00:200::/64")}}

	if r := ask(t, tp.pod, "tcp", srv.Addr); r.Source.Addr() != tp.podAddr {
		t.Fatalf("without masquerade the server saw %v, want the pod address", r.Source)
	}
	for range 2 { // idempotent
		if err := m.Ensure(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	nat, _ := k.Save(ctx, IPv4, TableNAT)
	if c := nat.Chain(m.Chain()); c == nil || len(c.Rules) != 2 || len(nat.Chain("POSTROUTING").Rules) != 1 {
		t.Fatalf("masquerade rules: %v %v", chainNames(nat), nat.Chain("POSTROUTING").Rules)
	}
	if nat6, _ := k.Save(ctx, IPv6, TableNAT); nat6.Chain(m.Chain()) == nil {
		t.Errorf("no IPv6 masquerade chain")
	}
	r := ask(t, tp.pod, "tcp", srv.Addr)
	if r.Source.Addr() != a4("10.99.0.1") {
		t.Fatalf("with masquerade the server saw %v, want 10.99.0.1", r.Source)
	}
	flows, err := ListFlows(ctx, tp.node, FlowFilter{Protocol: TCP, OrigSrc: tp.podAddr, OrigDst: a4("10.99.0.2")})
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
	if first, _ := ParseRule(IPv4, nat.Chain(m.Chain()).Rules[0]); first.Destination.Prefix != p4("224.0.0.0/4") {
		t.Errorf("first rule %v does not exclude multicast", first)
	}

	for range 2 {
		if err := m.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if got := saveText(t, tp.node, IPv4) + saveText(t, tp.node, IPv6); strings.Contains(got, "PODNET") {
		t.Fatalf("rules left after Delete:\n%s", got)
	}
	if r := ask(t, tp.pod, "tcp", srv.Addr); r.Source.Addr() != tp.podAddr {
		t.Fatalf("after Delete the server saw %v, want the pod address", r.Source)
	}
}

// udpClient sends datagrams from a fixed source port, so they all belong
// to one conntrack flow.
type udpClient struct{ c *net.UDPConn }

func newUDPClient(t *testing.T, ns *netns.NS, from, to netip.AddrPort) *udpClient {
	var c *net.UDPConn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(from), net.UDPAddrFromAddrPort(to))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpClient{c}
}

// ask returns the name of the backend that answered.
func (u *udpClient) ask(t *testing.T) string {
	t.Helper()
	buf := make([]byte, 200)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		u.c.Write([]byte("who\n"))
		u.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := u.c.Read(buf)
		if err == nil {
			_, name, _ := strings.Cut(strings.TrimSpace(string(buf[:n])), " ")
			return name
		}
	}
	t.Fatal("no UDP answer")
	return ""
}

// TestDNATTraffic: VIP:port → endpoint over TCP and UDP; conntrack shows
// the translation; after the endpoint changes, a UDP flow keeps its old
// backend until its conntrack entry is deleted.
func TestDNATTraffic(t *testing.T) {
	pair := nstest.NewPair(t) // node A 10.99.0.1, client B 10.99.0.2
	node, client := pair.A, pair.B
	ctx := context.Background()
	b1, err := probe.Serve(node, netip.MustParseAddrPort("10.99.0.1:0"), "b1")
	if err != nil {
		t.Fatal(err)
	}
	defer b1.Close()
	b2, err := probe.Serve(node, netip.MustParseAddrPort("10.99.0.1:0"), "b2")
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	h, _ := nl.Handle(client)
	_, vipNet, _ := net.ParseCIDR("10.96.0.0/16")
	if err := h.RouteAdd(&netlink.Route{Dst: vipNet, Gw: net.ParseIP("10.99.0.1")}); err != nil {
		t.Fatal(err)
	}
	h.Close()

	k := NewKernel(node)
	vipAddr := netip.MustParseAddrPort("10.96.0.10:80")
	apply := func(proto Protocol, eps ...*probe.Server) {
		t.Helper()
		tx := NewTransaction()
		var all []Rule
		for _, p := range []Protocol{TCP, UDP} {
			v := VIP{Chain: "PODNET-SVC-" + strings.ToUpper(string(p)), Protocol: p, Addr: vipAddr, Comment: "test/vip"}
			for i, s := range eps {
				v.Endpoints = append(v.Endpoints, Endpoint{Chain: fmt.Sprintf("PODNET-SEP-%s%d", strings.ToUpper(string(p)), i), Addr: s.Addr})
			}
			v.Declare(tx)
			all = append(all, v.DispatchRule())
		}
		tx.Declare(Chain{IPv4, TableNAT, "PODNET-SERVICES"}, all...)
		tx.EnsureRule(Chain{IPv4, TableNAT, "PREROUTING"}, true, Rule{Target: Jump("PODNET-SERVICES")})
		tx.Prune(IPv4, TableNAT, "PODNET-")
		if err := k.Run(ctx, tx); err != nil {
			t.Fatal(err)
		}
	}
	apply(TCP, b1)

	r := ask(t, client, "tcp", vipAddr)
	if r.Name != "b1" || r.Source.Addr() != a4("10.99.0.2") {
		t.Fatalf("tcp via VIP: %+v, want b1 seeing 10.99.0.2", r)
	}
	flows, err := ListFlows(ctx, node, FlowFilter{Protocol: TCP, OrigDst: vipAddr.Addr(), DstPort: 80})
	if err != nil || len(flows) == 0 {
		t.Fatalf("conntrack: %v, %v", flows, err)
	}
	if fl := flows[0]; fl.Reply.Src != b1.Addr.Addr() || fl.Reply.SrcPort != b1.Addr.Port() {
		t.Fatalf("conntrack flow %s: reply not from b1 %s", fl, b1.Addr)
	} else {
		t.Logf("conntrack: %s", fl)
		if s := fl.String(); !strings.HasPrefix(s, "tcp      6 ") || !strings.Contains(s, fmt.Sprintf("dst=10.96.0.10 sport=%d dport=80 src=10.99.0.1", fl.Orig.SrcPort)) {
			t.Errorf("flow printed as %q", s)
		}
	}

	u := newUDPClient(t, client, netip.MustParseAddrPort("10.99.0.2:40000"), vipAddr)
	if got := u.ask(t); got != "b1" {
		t.Fatalf("udp via VIP answered by %q, want b1", got)
	}
	apply(UDP, b2) // endpoint b1 replaced by b2
	if got := u.ask(t); got != "b1" {
		t.Fatalf("udp flow moved to %q before its conntrack entry was deleted", got)
	}
	n, err := DeleteFlows(ctx, node, FlowFilter{Protocol: UDP, OrigDst: vipAddr.Addr(), ReplySrc: b1.Addr.Addr(), ReplySrcPort: b1.Addr.Port()})
	if err != nil || n != 1 {
		t.Fatalf("DeleteFlows = %d, %v", n, err)
	}
	if got := u.ask(t); got != "b2" {
		t.Fatalf("after deleting the flow udp answered by %q, want b2", got)
	}
	if err := FlushFlows(ctx, node); err != nil {
		t.Fatal(err)
	}
	if fl, _ := ListFlows(ctx, node, FlowFilter{OrigDst: vipAddr.Addr()}); len(fl) != 0 {
		t.Errorf("flows after flush: %v", fl)
	}
	if err := k.Run(ctx, NewTransaction().RemoveRule(Chain{IPv4, TableNAT, "PREROUTING"}, Rule{Target: Jump("PODNET-SERVICES")}).Prune(IPv4, TableNAT, "PODNET-")); err != nil {
		t.Fatal(err)
	}
	if got := saveText(t, node, IPv4); strings.Contains(got, "PODNET") {
		t.Errorf("left:\n%s", got)
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
	k := NewKernel(tp.node)
	hp := HostPorts{}
	maps := []HostPort{{Protocol: TCP, HostPort: 8080, Pod: srv.Addr}, {Protocol: UDP, HostPort: 8080, Pod: srv.Addr}}
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
	if got := saveText(t, tp.node, IPv4) + saveText(t, tp.node, IPv6); strings.Contains(got, "PODNET") {
		t.Errorf("left:\n%s", got)
	}
}

func TestKernelErrors(t *testing.T) {
	ns := nstest.New(t)
	k := NewKernel(ns)
	err := k.Run(context.Background(), NewTransaction().Delete(Chain{IPv4, TableNAT, "POSTROUTING"}, Rule{Target: Return}))
	if err == nil || !strings.Contains(err.Error(), ns.String()) {
		t.Fatalf("err = %v, want it to name the namespace", err)
	}
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting a missing rule: %v, want ErrNotFound", err)
	}
}

// TestKernelAtomicAcrossTables: iptables-restore commits table by table,
// so a transaction whose last table fails would leave the others applied;
// Run rolls them back, in both families, and leaves foreign rules as they
// were.
func TestKernelAtomicAcrossTables(t *testing.T) {
	ns := nstest.New(t)
	k := NewKernel(ns)
	ctx := context.Background()
	restoreRaw(t, ns, IPv4, "*filter\n:FOREIGN-F - [0:0]\n-A FOREIGN-F -s 10.9.0.0/16 -j ACCEPT\n-A FORWARD -j FOREIGN-F\nCOMMIT\n")
	before := dropEmptyTables(saveText(t, ns, IPv4)) + dropEmptyTables(saveText(t, ns, IPv6))

	tx := NewTransaction().
		Declare(Chain{IPv4, TableFilter, "PODNET-F"}, Rule{Protocol: TCP, Target: Accept}).
		EnsureRule(Chain{IPv4, TableFilter, "FORWARD"}, true, Rule{Target: Jump("PODNET-F")}).
		Declare(Chain{IPv6, TableFilter, "PODNET-F6"}, Rule{Target: Accept})
	// The largest table goes last; make nat the largest and the one that
	// fails: its last rule jumps to a chain that exists nowhere.
	var natRules []Rule
	for i := range 5 {
		natRules = append(natRules, Rule{Protocol: TCP, Matches: []Match{Ports{Dst: Port(uint16(2000 + i))}}, Target: Return})
	}
	natRules = append(natRules, Rule{Target: Jump("PODNET-NOWHERE")})
	tx.Declare(Chain{IPv6, TableNAT, "PODNET-N"}, natRules...)

	err := k.Run(ctx, tx)
	if err == nil {
		t.Fatal("a transaction with a jump to a missing chain succeeded")
	}
	// A table the transaction brought into being stays, empty: its
	// built-in chains accept everything, as when it did not exist.
	if after := dropEmptyTables(saveText(t, ns, IPv4)) + dropEmptyTables(saveText(t, ns, IPv6)); after != before {
		t.Fatalf("a failed transaction left changes behind (%v):\n%s\nwant\n%s", err, after, before)
	}
	// Without the bad rule the same transaction applies whole.
	tx = NewTransaction().
		Declare(Chain{IPv4, TableFilter, "PODNET-F"}, Rule{Protocol: TCP, Target: Accept}).
		Declare(Chain{IPv6, TableNAT, "PODNET-N"}, natRules[:5]...)
	if err := k.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if s := saveText(t, ns, IPv4) + saveText(t, ns, IPv6); !strings.Contains(s, ":PODNET-F") || !strings.Contains(s, ":PODNET-N") || !strings.Contains(s, "FOREIGN-F") {
		t.Fatalf("after a good transaction:\n%s", s)
	}
}

// dropEmptyTables removes from saved text the tables that hold nothing but
// built-in chains with the ACCEPT policy.
func dropEmptyTables(saved string) string {
	var out []string
	var table []string
	empty := true
	for _, l := range strings.Split(saved, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table, empty = []string{l}, true
		case l == "COMMIT":
			if !empty {
				out = append(out, append(table, l)...)
			}
			table = nil
		case table != nil:
			table = append(table, l)
			if !(strings.HasPrefix(l, ":") && strings.HasSuffix(l, " ACCEPT")) {
				empty = false
			}
		default:
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
