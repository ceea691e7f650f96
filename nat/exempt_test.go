package nat

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
)

// TestMasqueradeExemptRules: the Exempt destinations are RETURN rules of
// their family, in order, after multicast and before MASQUERADE; bad ones
// are refused before anything changes.
func TestMasqueradeExemptRules(t *testing.T) {
	ctx := context.Background()
	fk := iptables.NewFake()
	m := NetworkMasquerade{Network: "agent", Subnets: []netip.Prefix{p4("10.200.1.0/24")},
		Exempt: []netip.Prefix{p4("10.200.0.0/16"), p4("fd00:200::/48"), p4("192.168.7.9/20")}}
	for range 2 {
		if err := m.Ensure(ctx, IPTables(fk)); err != nil {
			t.Fatal(err)
		}
	}
	want := strings.Join([]string{
		"-A " + m.Chain() + " -d 224.0.0.0/4 -j RETURN",
		"-A " + m.Chain() + " -d 10.200.0.0/16 -j RETURN",
		"-A " + m.Chain() + " -d 192.168.0.0/20 -j RETURN",
		"-A " + m.Chain() + " ! -d 10.200.1.0/24 -j MASQUERADE",
	}, "\n")
	if got := fk.Dump(iptables.IPv4); !strings.Contains(got, want) || fk.Runs() != 1 {
		t.Errorf("after %d runs, IPv4 nat:\n%s\nwant the chain\n%s", fk.Runs(), got, want)
	}
	if got := fk.Dump(iptables.IPv6); strings.Contains(got, m.Chain()) {
		t.Errorf("an IPv6 chain for an IPv4-only network:\n%s", got)
	}
	for _, bad := range [][]netip.Prefix{{{}}, {p4("0.0.0.0/0")}, {p4("::/0")}} {
		b := m
		b.Exempt = bad
		if err := b.Ensure(ctx, IPTables(iptables.NewFake())); !errors.Is(err, ErrInvalid) {
			t.Errorf("Exempt %v: %v, want ErrInvalid", bad, err)
		}
	}
}

// TestMasqueradeExemptConverges: the nf_tables fast path of Ensure tells
// apart rule sets that differ only in their exempt destinations (added,
// removed, reordered, another length), so Ensure converges to each.
func TestMasqueradeExemptConverges(t *testing.T) {
	ns := nstest.New(t)
	k := iptables.NewKernel(ns)
	ctx := context.Background()
	subnets := []netip.Prefix{p4("10.200.1.0/24"), p4("fd00:200:1::/64")}
	steps := [][]netip.Prefix{
		nil,
		{p4("10.200.0.0/16")},
		{p4("10.200.0.0/16"), p4("10.96.0.0/12")},
		{p4("10.96.0.0/12"), p4("10.200.0.0/16")},
		{p4("10.96.0.0/12"), p4("10.200.0.0/15")},
		{p4("10.96.0.0/12"), p4("10.200.0.0/15"), p4("fd00:200::/48")},
		{p4("10.96.0.0/12"), p4("10.200.0.0/15"), p4("fd00:200::/47")},
		{p4("fd00:200::/47")},
		nil,
	}
	for i, ex := range steps {
		m := NetworkMasquerade{Network: "agent", Subnets: subnets, Exempt: ex}
		if err := m.Ensure(ctx, IPTables(k)); err != nil {
			t.Fatal(err)
		}
		if err := m.Check(ctx, IPTables(k)); err != nil {
			t.Errorf("step %d: after Ensure of exempt %v: %v", i, ex, err)
		}
		if !m.present(ns) {
			t.Errorf("step %d: the nf_tables view does not recognise exempt %v it just wrote", i, ex)
		}
		for j, other := range steps {
			o := NetworkMasquerade{Network: "agent", Subnets: subnets, Exempt: other}
			if j != i && !samePrefixes(other, ex) && o.present(ns) {
				t.Errorf("step %d: the nf_tables view took exempt %v for %v", i, ex, other)
			}
		}
	}
}

func samePrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestMasqueradeExemptTraffic: from a pod, a server at an exempt
// destination sees the pod's address and one elsewhere the node's, with
// the rules in nf_tables and in legacy x_tables; each mode's rules are
// written to its own backend only, and Delete removes them.
func TestMasqueradeExemptTraffic(t *testing.T) {
	for _, mode := range []iptables.Mode{iptables.ModeNFT, iptables.ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			tp := newTopo(t)
			tp.routeBack(t)
			if err := addr.Ensure(tp.outside, "eth0", p4("10.99.0.3/24")); err != nil {
				t.Fatal(err)
			}
			exempt, masq := serve(t, tp, "10.99.0.2:0"), serve(t, tp, "10.99.0.3:0")
			ctx := context.Background()
			k, err := iptables.NewKernelMode(tp.node, mode)
			if err != nil {
				t.Fatal(err)
			}
			m := NetworkMasquerade{Network: "agent", Subnets: []netip.Prefix{p4("10.200.0.0/24")}, Exempt: []netip.Prefix{p4("10.99.0.2/32")}}
			for range 2 {
				if err := m.Ensure(ctx, IPTables(k)); err != nil {
					t.Fatal(err)
				}
			}
			if r := ask(t, tp.pod, "tcp", exempt); r.Source.Addr() != tp.podAddr {
				t.Errorf("exempt destination saw %v, want the pod address", r.Source)
			}
			if r := ask(t, tp.pod, "tcp", masq); r.Source.Addr() != a4("10.99.0.1") {
				t.Errorf("other destination saw %v, want the node address 10.99.0.1", r.Source)
			}
			other := iptables.ModeLegacy
			if mode == iptables.ModeLegacy {
				other = iptables.ModeNFT
			}
			if got := variantSave(t, tp.node, other); strings.Contains(got, "PODNET") {
				t.Errorf("%s rules written to %s:\n%s", mode, other, got)
			}
			if err := m.Delete(ctx, IPTables(k)); err != nil {
				t.Fatal(err)
			}
			if got := variantSave(t, tp.node, mode); strings.Contains(got, "PODNET") {
				t.Errorf("rules left after Delete:\n%s", got)
			}
		})
	}
}

func serve(t *testing.T, tp topo, at string) netip.AddrPort {
	t.Helper()
	srv, err := probe.Serve(tp.outside, netip.MustParseAddrPort(at), at)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv.Addr
}

// variantSave is iptables-save of both families run with mode's binaries.
func variantSave(t *testing.T, ns *netns.NS, mode iptables.Mode) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables-", "ip6tables-"} {
		out, err := execns.Output(context.Background(), ns, nil, tool+string(mode)+"-save")
		if err != nil {
			t.Fatal(err)
		}
		b.Write(out)
	}
	return b.String()
}
