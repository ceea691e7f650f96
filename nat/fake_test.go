package nat

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

// TestFakeMasqueradeIdempotent: Ensure writes once, then only reads.
func TestFakeMasqueradeIdempotent(t *testing.T) {
	ctx := context.Background()
	fk := iptables.NewFake()
	m := NetworkMasquerade{Network: "n", Subnets: []netip.Prefix{p4("10.1.0.0/16"), p4("fd01::/64")}}
	for range 3 {
		if err := m.Ensure(ctx, IPTables(fk)); err != nil {
			t.Fatal(err)
		}
	}
	if fk.Runs() != 1 {
		t.Errorf("Ensure ran %d transactions, want 1", fk.Runs())
	}
	if err := m.Delete(ctx, IPTables(fk)); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, IPTables(fk)); err != nil {
		t.Fatal(err)
	}
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if tr, _ := fk.Save(ctx, f, iptables.TableNAT); len(tr.Chains) != 4 || len(tr.Chain("POSTROUTING").Rules) != 0 {
			t.Errorf("%v after Delete: %v", f, chainNames(tr))
		}
	}
}

// TestMasqueradeBackendInvalid: a missing backend, or one without its
// iptables backend or namespace, is refused with ErrInvalid by every call,
// as is a bad specification on either backend, before anything is read.
func TestMasqueradeBackendInvalid(t *testing.T) {
	ctx := context.Background()
	m := NetworkMasquerade{Network: "n", Subnets: []netip.Prefix{p4("10.1.0.0/16")}}
	calls := map[string]func(NetworkMasquerade, Backend) error{
		"Ensure": func(m NetworkMasquerade, b Backend) error { return m.Ensure(ctx, b) },
		"Check":  func(m NetworkMasquerade, b Backend) error { return m.Check(ctx, b) },
		"Delete": func(m NetworkMasquerade, b Backend) error { return m.Delete(ctx, b) },
	}
	for name, call := range calls {
		for _, b := range []Backend{nil, IPTables(nil), Nftables(nil)} {
			if err := call(m, b); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s with backend %#v: %v, want ErrInvalid", name, b, err)
			}
		}
		fk := iptables.NewFake()
		// A namespace that is never opened: validation comes first.
		for _, b := range []Backend{IPTables(fk), Nftables(&netns.NS{})} {
			for _, bad := range []NetworkMasquerade{{Subnets: m.Subnets}, {Network: "n", Subnets: m.Subnets, Prefix: "A-B"}} {
				if err := call(bad, b); !errors.Is(err, ErrInvalid) {
					t.Errorf("%s of %+v: %v, want ErrInvalid", name, bad, err)
				}
			}
		}
		if fk.Runs() != 0 {
			t.Errorf("%s of bad input ran %d transactions", name, fk.Runs())
		}
	}
}
