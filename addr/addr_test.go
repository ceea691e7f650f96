package addr_test

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
)

func TestMain(m *testing.M) { nstest.Main(m) }

func TestEnsureListDelete(t *testing.T) {
	p := nstest.NewPair(t)
	extra := netip.MustParsePrefix("10.200.0.4/24")
	v6 := netip.MustParsePrefix("fd00:200::4/64")
	for range 2 {
		for _, a := range []netip.Prefix{extra, v6} {
			if err := addr.Ensure(p.B, "eth0", a); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err := addr.List(p.B, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []netip.Prefix{p.AddrB, extra, v6} {
		if !slices.Contains(got, want) {
			t.Errorf("List = %v, lacks %v", got, want)
		}
	}
	// The new address answers at once from the other side.
	if err := addr.Ensure(p.A, "eth0", netip.MustParsePrefix("10.200.0.1/24")); err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Ping(p.A, extra.Addr(), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	// The IPv6 address skips duplicate address detection: a server can
	// bind it at once, which a tentative address refuses.
	srv, err := probe.Serve(p.B, netip.AddrPortFrom(v6.Addr(), 8080), "b")
	if err != nil {
		t.Fatalf("bind the new IPv6 address at once: %v", err)
	}
	srv.Close()
	for range 2 {
		if err := addr.Delete(p.B, "eth0", extra); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := addr.List(p.B, "eth0"); slices.Contains(got, extra) {
		t.Errorf("after Delete: %v", got)
	}
	if err := addr.Delete(p.B, "nosuch", extra); err != nil {
		t.Errorf("Delete on a missing link: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	ns := nstest.New(t)
	for _, a := range []netip.Prefix{{}, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("224.0.0.1/32")} {
		if err := addr.Ensure(ns, "lo", a); !errors.Is(err, addr.ErrInvalid) {
			t.Errorf("Ensure(%v) = %v, want ErrInvalid", a, err)
		}
	}
	if err := addr.Ensure(ns, "", netip.MustParsePrefix("10.0.0.1/8")); !errors.Is(err, addr.ErrInvalid) {
		t.Errorf("empty device: %v", err)
	}
	if err := addr.Ensure(ns, "nosuch", netip.MustParsePrefix("10.0.0.1/8")); !errors.Is(err, addr.ErrNotFound) {
		t.Errorf("missing device: %v", err)
	}
}
