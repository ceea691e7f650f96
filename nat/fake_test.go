package nat

import (
	"context"
	"net/netip"
	"testing"

	"github.com/podnet/podnet/iptables"
)

// TestFakeMasqueradeIdempotent: Ensure writes once, then only reads.
func TestFakeMasqueradeIdempotent(t *testing.T) {
	ctx := context.Background()
	fk := iptables.NewFake()
	m := NetworkMasquerade{Network: "n", Subnets: []netip.Prefix{p4("10.1.0.0/16"), p4("fd01::/64")}}
	for range 3 {
		if err := m.Ensure(ctx, fk); err != nil {
			t.Fatal(err)
		}
	}
	if fk.Runs() != 1 {
		t.Errorf("Ensure ran %d transactions, want 1", fk.Runs())
	}
	if err := m.Delete(ctx, fk); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, fk); err != nil {
		t.Fatal(err)
	}
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if tr, _ := fk.Save(ctx, f, iptables.TableNAT); len(tr.Chains) != 4 || len(tr.Chain("POSTROUTING").Rules) != 0 {
			t.Errorf("%v after Delete: %v", f, chainNames(tr))
		}
	}
}
