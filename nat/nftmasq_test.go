package nat

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest/probe"
)

func nftList(t *testing.T, ns *netns.NS) string {
	t.Helper()
	out, err := execns.Output(context.Background(), ns, nil, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestMasqueradeNftables: the nftables form masquerades the pod's traffic
// to the outside and not to an exempt destination, in both families;
// Ensure of an unchanged rule set writes nothing (rule handles stay);
// Check sees a missing table; Delete removes one network and leaves
// another's.
func TestMasqueradeNftables(t *testing.T) {
	tp := newTopo(t)
	tp.routeBack(t)
	ctx, nb := context.Background(), Nftables(tp.node)
	srv, err := probe.Serve(tp.outside, netip.MustParseAddrPort("10.99.0.2:0"), "outside")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	m := NetworkMasquerade{Network: "podnet-test", Subnets: []netip.Prefix{p4("10.200.0.0/24"), p4("fd00:200::/64")}, RandomFully: true}
	other := NetworkMasquerade{Network: "other", Subnets: []netip.Prefix{p4("10.201.0.0/24")}}
	if err := m.Check(ctx, nb); !errors.Is(err, ErrNotFound) {
		t.Errorf("Check before Ensure: %v, want ErrNotFound", err)
	}
	for _, n := range []NetworkMasquerade{m, other} {
		if err := n.Ensure(ctx, nb); err != nil {
			t.Fatal(err)
		}
	}
	before := nftList(t, tp.node)
	for _, want := range []string{"table ip podnet-masquerade", "table ip6 podnet-masquerade", "ip saddr 10.200.0.0/24 jump " + m.NftChain() + ` comment "podnet masquerade: podnet-test"`,
		"ip daddr != 10.200.0.0/24 masquerade fully-random", "ip6 daddr != fd00:200::/64 masquerade fully-random", "ip6 daddr ff00::/8 return", "ip saddr 10.201.0.0/24 jump " + other.NftChain()} {
		if !strings.Contains(before, want) {
			t.Errorf("no %q in\n%s", want, before)
		}
	}
	if err := m.Ensure(ctx, nb); err != nil {
		t.Fatal(err)
	}
	handles := func() string {
		out, err := execns.Output(ctx, tp.node, nil, "nft", "-a", "list", "ruleset")
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	h1 := handles()
	if err := m.Ensure(ctx, nb); err != nil {
		t.Fatal(err)
	}
	if h2 := handles(); h1 != h2 {
		t.Errorf("Ensure of an unchanged rule set rewrote it:\n%s\n---\n%s", h1, h2)
	}
	must(t, m.Check(ctx, nb))
	if r := ask(t, tp.pod, "tcp", srv.Addr); r.Source.Addr() != a4("10.99.0.1") {
		t.Fatalf("with masquerade the server saw %v, want 10.99.0.1", r.Source)
	}
	// Exempting the outside network turns masquerade off for it.
	ex := m
	ex.Exempt = []netip.Prefix{p4("10.99.0.0/24")}
	must(t, ex.Ensure(ctx, nb))
	if r := ask(t, tp.pod, "tcp", srv.Addr); r.Source.Addr() != tp.podAddr {
		t.Errorf("exempt destination: the server saw %v, want the pod's address", r.Source)
	}
	if err := m.Check(ctx, nb); !errors.Is(err, ErrNotFound) {
		t.Errorf("Check of the old specification: %v, want ErrNotFound", err)
	}
	must(t, ex.Delete(ctx, nb))
	must(t, ex.Delete(ctx, nb)) // nothing left to delete
	after := nftList(t, tp.node)
	if strings.Contains(after, m.NftChain()) || !strings.Contains(after, other.NftChain()) {
		t.Errorf("after Delete:\n%s", after)
	}
	if _, err := execns.Output(context.Background(), tp.node, nil, "nft", "delete", "table", "ip", "podnet-masquerade"); err != nil {
		t.Fatal(err)
	}
	if err := other.Check(ctx, nb); !errors.Is(err, ErrNotFound) {
		t.Errorf("Check after the table was deleted: %v, want ErrNotFound", err)
	}
	if err := (NetworkMasquerade{Network: "x"}).Ensure(ctx, nb); !errors.Is(err, ErrInvalid) {
		t.Errorf("no subnets: %v, want ErrInvalid", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
