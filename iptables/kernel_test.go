package iptables

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

	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/internal/nl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
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
	seedForeignRules(t, ns)
	check := foreignUnchanged(t, ns)

	for _, f := range []Family{IPv4, IPv6} {
		if err := k.Run(ctx, ownedChains(f, 3)); err != nil {
			t.Fatal(err)
		}
	}
	check("after declaring 3 chains")
	checkRejectedChangeNothing(t, ctx, k, ns)
	checkPrune(t, ctx, k)
	check("after prune")
	checkRerunIdempotent(t, ctx, k)

	// Clean up everything we own; foreign state is what it was.
	for _, f := range []Family{IPv4, IPv6} {
		if err := k.Run(ctx, NewTransaction().Prune(f, TableNAT, PrefixOwner("PODNET"))); err != nil {
			t.Fatal(err)
		}
	}
	if got := saveText(t, ns, IPv4); strings.Contains(got, "PODNET") {
		t.Errorf("owned rules left:\n%s", got)
	}
	check("after cleanup")
}

// seedForeignRules adds, in both families, chains and rules podnet does not
// own, beside and jumped to from the built-in chains podnet also uses.
func seedForeignRules(t *testing.T, ns *netns.NS) {
	t.Helper()
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
}

// foreignUnchanged returns a check that fails the test when the lines of
// either family's iptables-save that do not mention PODNET differ from
// what they are now.
func foreignUnchanged(t *testing.T, ns *netns.NS) func(step string) {
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
	return func(step string) {
		t.Helper()
		for _, f := range []Family{IPv4, IPv6} {
			if got := foreign(f); got != before[f] {
				t.Fatalf("%s: foreign rules changed (%v):\n%s\nwant\n%s", step, f, got, before[f])
			}
		}
	}
}

// ownedChains is a transaction that declares n chains PODNET-S<i> in f's
// nat table, each jumped to from PREROUTING, and prunes every other chain
// PODNET owns there.
func ownedChains(f Family, n int) *Transaction {
	tx := NewTransaction()
	for i := range n {
		tx.Declare(Chain{f, TableNAT, fmt.Sprintf("PODNET-S%d", i)}, Rule{Protocol: TCP, Target: Return})
		tx.EnsureRule(Chain{f, TableNAT, "PREROUTING"}, true, Rule{Protocol: TCP, Matches: []Match{Ports{Dst: Port(uint16(1000 + i))}}, Target: Jump(fmt.Sprintf("PODNET-S%d", i))})
	}
	return tx.Prune(f, TableNAT, PrefixOwner("PODNET"))
}

// checkRejectedChangeNothing runs transactions that restore or Run reject,
// each otherwise valid, and fails the test if any changed the tables.
func checkRejectedChangeNothing(t *testing.T, ctx context.Context, k *Kernel, ns *netns.NS) {
	t.Helper()
	snap := saveText(t, ns, IPv4) + saveText(t, ns, IPv6)

	// DNAT is not valid in the filter table: the kernel rejects that rule,
	// and with it the whole transaction.
	// The last rule appends to a chain that does not exist: restore
	// rejects it, and with it the whole transaction.
	bad := ownedChains(IPv4, 1)
	bad.Declare(Chain{IPv4, TableNAT, "PODNET-NEW"}, Rule{Target: Return})
	bad.Append(Chain{IPv4, TableNAT, "PODNET-MISSING"}, Rule{Target: Return})
	if err := k.Run(ctx, bad); err == nil {
		t.Fatal("transaction with a rule in a missing chain succeeded")
	} else {
		t.Logf("rejected as expected: %v", err)
	}
	// NAT targets outside the nat table are refused before anything runs.
	if err := k.Run(ctx, ownedChains(IPv4, 1).Declare(Chain{IPv4, TableFilter, "PODNET-BAD"}, Rule{Target: DNAT{To: a4("10.0.0.1")}})); !errors.Is(err, ErrInvalid) {
		t.Fatalf("DNAT in filter: err = %v, want ErrInvalid", err)
	}
	// A jump to a chain that does not exist.
	bad6 := ownedChains(IPv6, 1).Append(Chain{IPv6, TableNAT, "PODNET-S0"}, Rule{Target: Jump("PODNET-NOWHERE")})
	if err := k.Run(ctx, bad6); err == nil {
		t.Fatal("transaction with a jump to a missing chain succeeded")
	}
	if got := saveText(t, ns, IPv4) + saveText(t, ns, IPv6); got != snap {
		t.Logf("%q", got)
		t.Fatalf("failed transactions changed the tables:\n%s\nwant\n%s", got, snap)
	}
}

// checkPrune prunes the 3 owned chains down to 1: the stale chains and
// their jumps go, the foreign rule stays.
func checkPrune(t *testing.T, ctx context.Context, k *Kernel) {
	t.Helper()
	for _, f := range []Family{IPv4, IPv6} {
		if err := k.Run(ctx, ownedChains(f, 1)); err != nil {
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
}

// checkRerunIdempotent runs the 1-chain transaction again: EnsureRule
// does not duplicate the jump.
func checkRerunIdempotent(t *testing.T, ctx context.Context, k *Kernel) {
	t.Helper()
	if err := k.Run(ctx, ownedChains(IPv4, 1)); err != nil {
		t.Fatal(err)
	}
	if nat, _ := k.Save(ctx, IPv4, TableNAT); len(nat.Chain("PREROUTING").Rules) != 2 {
		t.Errorf("EnsureRule duplicated: %q", nat.Chain("PREROUTING").Rules)
	}
}

func chainNames(t *TableRules) []string {
	var n []string
	for _, c := range t.Chains {
		n = append(n, c.Name)
	}
	return n
}

// TestKernelCheck: Check answers from the kernel, through go-iptables, as
// Fake does from memory: present, absent, and a missing chain (false).
func TestKernelCheck(t *testing.T) {
	ns := nstest.New(t)
	k := NewKernel(ns)
	fk := NewFake()
	ctx := context.Background()
	c := Chain{IPv4, TableNAT, "PODNET-C"}
	r := Rule{Source: Addr{Prefix: p4("10.9.0.0/16")}, Target: Masquerade{}}
	other := Rule{Source: Addr{Prefix: p4("10.8.0.0/16")}, Target: Masquerade{}}
	for _, b := range []Backend{k, fk} {
		if err := b.Run(ctx, NewTransaction().Declare(c, r)); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			c    Chain
			r    Rule
			want bool
		}{{c, r, true}, {c, other, false}, {Chain{IPv4, TableNAT, "PODNET-NONE"}, r, false}} {
			if ok, err := b.Check(tc.c, tc.r); err != nil || ok != tc.want {
				t.Errorf("%T.Check(%s, %s) = %v, %v; want %v", b, tc.c, tc.r, ok, err, tc.want)
			}
		}
		if _, err := b.Check(Chain{Family(5), TableNAT, "X"}, r); !errors.Is(err, ErrInvalid) {
			t.Errorf("%T.Check with family 5: %v, want ErrInvalid", b, err)
		}
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

// TestDNATTraffic: a service address is DNATed to a backend over TCP and
// UDP; conntrack shows the translation; after the backend changes, a UDP
// flow keeps its old backend until its conntrack entry is deleted.
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
	routeServicesVia(t, client, "10.99.0.1")

	k := NewKernel(node)
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	applyDNAT(t, k, vip, b1.Addr)
	checkTCPTranslated(t, node, client, vip, b1.Addr)
	checkUDPFlowKeepsBackend(t, k, node, client, vip, b1.Addr, b2.Addr)

	if err := conntrack.Flush(ctx, node); err != nil {
		t.Fatal(err)
	}
	if fl, _ := conntrack.List(ctx, node, conntrack.Filter{OrigDst: vip.Addr()}.Match); len(fl) != 0 {
		t.Errorf("flows after flush: %v", fl)
	}
	if err := k.Run(ctx, NewTransaction().RemoveRule(Chain{IPv4, TableNAT, "PREROUTING"}, Rule{Target: Jump(dnatServices.Name)}).Prune(IPv4, TableNAT, PrefixOwner("PODNET"))); err != nil {
		t.Fatal(err)
	}
	if got := saveText(t, node, IPv4); strings.Contains(got, "PODNET") {
		t.Errorf("left:\n%s", got)
	}
}

// routeServicesVia routes the service range 10.96.0.0/16 in ns via gw.
func routeServicesVia(t *testing.T, ns *netns.NS, gw string) {
	t.Helper()
	h, _ := nl.Handle(ns)
	_, vipNet, _ := net.ParseCIDR("10.96.0.0/16")
	if err := h.RouteAdd(&netlink.Route{Dst: vipNet, Gw: net.ParseIP(gw)}); err != nil {
		t.Fatal(err)
	}
	h.Close()
}

// dnatServices is the chain TestDNATTraffic jumps to from PREROUTING.
var dnatServices = Chain{IPv4, TableNAT, "PODNET-SERVICES"}

// applyDNAT converges the nat table to DNAT vip, over TCP and UDP, to
// backend: PREROUTING jumps to dnatServices, which jumps to one chain per
// protocol.
func applyDNAT(t *testing.T, k *Kernel, vip, backend netip.AddrPort) {
	t.Helper()
	tx := NewTransaction()
	var dispatch []Rule
	for _, p := range []Protocol{TCP, UDP} {
		svc := Chain{IPv4, TableNAT, "PODNET-SVC-" + strings.ToUpper(string(p))}
		tx.Declare(svc, Rule{Protocol: p, Matches: []Match{Comment("test/vip")}, Target: DNATTo(backend)})
		dispatch = append(dispatch, Rule{Destination: Addr{Prefix: netip.PrefixFrom(vip.Addr(), 32)}, Protocol: p,
			Matches: []Match{Ports{Dst: Port(vip.Port())}}, Target: Jump(svc.Name)})
	}
	tx.Declare(dnatServices, dispatch...)
	tx.EnsureRule(Chain{IPv4, TableNAT, "PREROUTING"}, true, Rule{Target: Jump(dnatServices.Name)})
	tx.Prune(IPv4, TableNAT, PrefixOwner("PODNET"))
	if err := k.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
}

// checkTCPTranslated asks vip over TCP from client: backend answers, sees
// the client's own address, and conntrack on node shows the translation.
func checkTCPTranslated(t *testing.T, node, client *netns.NS, vip, backend netip.AddrPort) {
	t.Helper()
	r := ask(t, client, "tcp", vip)
	if r.Name != "b1" || r.Source.Addr() != a4("10.99.0.2") {
		t.Fatalf("tcp via VIP: %+v, want b1 seeing 10.99.0.2", r)
	}
	flows, err := conntrack.List(context.Background(), node, conntrack.Filter{Protocol: conntrack.TCP, OrigDst: vip.Addr(), DstPort: 80}.Match)
	if err != nil || len(flows) == 0 {
		t.Fatalf("conntrack: %v, %v", flows, err)
	}
	if fl := flows[0]; fl.Reply.Src != backend.Addr() || fl.Reply.SrcPort != backend.Port() {
		t.Fatalf("conntrack flow %s: reply not from b1 %s", fl, backend)
	} else {
		t.Logf("conntrack: %s", fl)
		if s := fl.String(); !strings.HasPrefix(s, "tcp      6 ") || !strings.Contains(s, fmt.Sprintf("dst=10.96.0.10 sport=%d dport=80 src=10.99.0.1", fl.Orig.SrcPort)) {
			t.Errorf("flow printed as %q", s)
		}
	}
}

// checkUDPFlowKeepsBackend replaces the backend from (b1) by to (b2): a UDP
// flow to vip stays with from until its conntrack entry is deleted.
func checkUDPFlowKeepsBackend(t *testing.T, k *Kernel, node, client *netns.NS, vip, from, to netip.AddrPort) {
	t.Helper()
	u := newUDPClient(t, client, netip.MustParseAddrPort("10.99.0.2:40000"), vip)
	if got := u.ask(t); got != "b1" {
		t.Fatalf("udp via VIP answered by %q, want b1", got)
	}
	applyDNAT(t, k, vip, to) // backend b1 replaced by b2
	if got := u.ask(t); got != "b1" {
		t.Fatalf("udp flow moved to %q before its conntrack entry was deleted", got)
	}
	// Two conditions, one of which selects nothing: one dump, one delete.
	stale := conntrack.Any(
		conntrack.Filter{Protocol: conntrack.UDP, OrigDst: vip.Addr(), ReplySrc: from.Addr(), ReplySrcPort: from.Port()},
		conntrack.Filter{Protocol: conntrack.UDP, OrigDst: a4("10.96.0.99")},
	)
	n, err := conntrack.Delete(context.Background(), node, stale)
	if err != nil || n != 1 {
		t.Fatalf("conntrack.Delete = %d, %v", n, err)
	}
	if got := u.ask(t); got != "b2" {
		t.Fatalf("after deleting the flow udp answered by %q, want b2", got)
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
