package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
)

// forEachStore runs f with a fresh MemoryStore and a fresh DiskStore.
func forEachStore(t *testing.T, f func(t *testing.T, s Store)) {
	t.Run("memory", func(t *testing.T) { f(t, NewMemoryStore()) })
	t.Run("disk", func(t *testing.T) {
		s, err := NewDiskStore(t.TempDir(), "net")
		if err != nil {
			t.Fatal(err)
		}
		f(t, s)
	})
}

func newAlloc(t *testing.T, s Store, sets ...RangeSet) *Allocator {
	t.Helper()
	a, err := NewAllocator(s, sets...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func set(subnet string, startEnd ...string) RangeSet {
	r := Range{Subnet: mp(subnet)}
	if len(startEnd) > 0 {
		r.RangeStart = ma(startEnd[0])
	}
	if len(startEnd) > 1 {
		r.RangeEnd = ma(startEnd[1])
	}
	return RangeSet{r}
}

func own(i int) Owner { return Owner{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"} }

func mustAllocate(t *testing.T, a *Allocator, o Owner, req ...netip.Addr) []Allocation {
	t.Helper()
	got, err := a.Allocate(context.Background(), o, req...)
	if err != nil {
		t.Fatalf("Allocate(%v, %v): %v", o, req, err)
	}
	return got
}

func addrs(l []Allocation) []string {
	var out []string
	for _, x := range l {
		out = append(out, x.Address.String())
	}
	return out
}

func TestAllocateRoundRobin(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		a := newAlloc(t, s, set("10.1.0.0/29")) // .1 gateway, .2-.6 allocatable
		var got []string
		for i := range 5 {
			got = append(got, addrs(mustAllocate(t, a, own(i)))...)
		}
		want := []string{"10.1.0.2/29", "10.1.0.3/29", "10.1.0.4/29", "10.1.0.5/29", "10.1.0.6/29"}
		if !slices.Equal(got, want) {
			t.Fatalf("allocations = %v, want %v", got, want)
		}
		if _, err := a.Allocate(ctx, own(9)); !errors.Is(err, ErrExhausted) {
			t.Fatalf("full range: error = %v, want ErrExhausted", err)
		}
		// Releasing .3 and .5 and allocating again continues after .6
		// (wrapping) instead of reusing the most recent release first.
		a.Release(ctx, own(1))
		a.Release(ctx, own(3))
		if g := addrs(mustAllocate(t, a, own(10))); g[0] != "10.1.0.3/29" {
			t.Errorf("after wrap got %v, want 10.1.0.3/29", g)
		}
		if g := addrs(mustAllocate(t, a, own(11))); g[0] != "10.1.0.5/29" {
			t.Errorf("next got %v, want 10.1.0.5/29", g)
		}
	})
}

func TestAllocateSkipsReservedAddresses(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		// The range covers the whole /29 including network and broadcast;
		// the gateway sits in the middle.
		a := newAlloc(t, s, RangeSet{{Subnet: mp("10.1.0.0/29"), RangeStart: ma("10.1.0.0"), RangeEnd: ma("10.1.0.7"), Gateway: ma("10.1.0.4")}})
		var got []string
		for i := range 5 {
			got = append(got, addrs(mustAllocate(t, a, own(i)))...)
		}
		want := []string{"10.1.0.1/29", "10.1.0.2/29", "10.1.0.3/29", "10.1.0.5/29", "10.1.0.6/29"}
		if !slices.Equal(got, want) {
			t.Fatalf("allocations = %v, want %v", got, want)
		}
		for _, bad := range []string{"10.1.0.0", "10.1.0.4", "10.1.0.7"} {
			if _, err := a.Allocate(context.Background(), own(20), ma(bad)); !errors.Is(err, ErrInvalid) {
				t.Errorf("requesting %s: error = %v, want ErrInvalid", bad, err)
			}
		}
	})
}

func TestAllocateAcrossRanges(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		rs := RangeSet{
			{Subnet: mp("10.1.0.0/24"), RangeStart: ma("10.1.0.10"), RangeEnd: ma("10.1.0.11")},
			{Subnet: mp("10.2.0.0/24"), RangeStart: ma("10.2.0.10"), RangeEnd: ma("10.2.0.10")},
		}
		a := newAlloc(t, s, rs)
		var got []string
		for i := range 3 {
			got = append(got, addrs(mustAllocate(t, a, own(i)))...)
		}
		if want := []string{"10.1.0.10/24", "10.1.0.11/24", "10.2.0.10/24"}; !slices.Equal(got, want) {
			t.Fatalf("allocations = %v, want %v", got, want)
		}
		if g := mustAllocate(t, a, own(0)); g[0].Gateway != ma("10.1.0.1") {
			t.Errorf("gateway = %v", g[0].Gateway)
		}
	})
}

func TestAllocateIdempotentAndRequested(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		a := newAlloc(t, s, set("10.1.0.0/24"), set("fd00::/120"))
		first := mustAllocate(t, a, own(1))
		again := mustAllocate(t, a, own(1))
		if !slices.Equal(first, again) || len(first) != 2 {
			t.Fatalf("repeated allocation %v, first %v", again, first)
		}
		// Same container, other interface: a second pair.
		other := mustAllocate(t, a, Owner{ContainerID: "c1", IfName: "net1"})
		if other[0] == first[0] {
			t.Fatalf("net1 got eth0's lease %v", other)
		}
		// Requested address.
		got := mustAllocate(t, a, own(2), ma("10.1.0.50"))
		if got[0].Address != mp("10.1.0.50/24") || got[1].Set != 1 {
			t.Fatalf("requested: %v", got)
		}
		mustAllocate(t, a, own(2), ma("10.1.0.50")) // idempotent with the same request
		if _, err := a.Allocate(ctx, own(2), ma("10.1.0.51")); !errors.Is(err, ErrConflict) {
			t.Errorf("different request for a held set: %v, want ErrConflict", err)
		}
		if _, err := a.Allocate(ctx, own(3), ma("10.1.0.50")); !errors.Is(err, ErrConflict) {
			t.Errorf("address of another owner: %v, want ErrConflict", err)
		}
		if _, err := a.Allocate(ctx, own(3), ma("10.9.0.1")); !errors.Is(err, ErrInvalid) {
			t.Errorf("address outside every set: %v, want ErrInvalid", err)
		}
		if _, err := a.Allocate(ctx, own(3), ma("10.1.0.60"), ma("10.1.0.61")); !errors.Is(err, ErrInvalid) {
			t.Errorf("two addresses for one set: %v, want ErrInvalid", err)
		}
		if l, _ := s.(interface{ Leases() ([]Lease, error) }).Leases(); len(l) != 6 {
			t.Errorf("failed requests left leases: %v", l)
		}
		got, err := a.Lookup(ctx, own(2))
		if err != nil || got[0].Address != mp("10.1.0.50/24") {
			t.Errorf("Lookup = %v, %v", got, err)
		}
		if _, err := a.Lookup(ctx, own(7)); !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup of nobody: %v, want ErrNotFound", err)
		}
	})
}

func TestAllocateAllOrNothing(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		a := newAlloc(t, s, set("10.1.0.0/24"), set("10.2.0.0/30")) // second set: one address
		mustAllocate(t, a, own(1))
		if _, err := a.Allocate(ctx, own(2)); !errors.Is(err, ErrExhausted) {
			t.Fatalf("error = %v, want ErrExhausted", err)
		}
		s.Lock(ctx)
		leases, _ := s.Leases()
		held, _ := s.Owned(own(2))
		s.Unlock()
		if len(leases) != 2 || len(held) != 0 {
			t.Fatalf("after a failed allocation: leases %v, owner 2 holds %v", leases, held)
		}
	})
}

func TestReleaseAndGC(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		a := newAlloc(t, s, set("10.1.0.0/24"))
		for i := range 4 {
			mustAllocate(t, a, own(i))
		}
		// A legacy lease (container ID only) and an unowned one.
		s.Lock(ctx)
		s.Reserve(ma("10.1.0.100"), Owner{ContainerID: "legacy"}, 0)
		s.Reserve(ma("10.1.0.101"), Owner{}, 0)
		s.Unlock()

		rel, err := a.Release(ctx, own(0))
		if err != nil || !slices.Equal(rel, []netip.Addr{ma("10.1.0.2")}) {
			t.Fatalf("Release = %v, %v", rel, err)
		}
		if rel, err := a.Release(ctx, own(0)); err != nil || len(rel) != 0 {
			t.Fatalf("second Release = %v, %v", rel, err)
		}
		// The legacy lease is found by container ID with any interface.
		if got, err := a.Lookup(ctx, Owner{ContainerID: "legacy", IfName: "eth0"}); err != nil || got[0].Address.Addr() != ma("10.1.0.100") {
			t.Fatalf("legacy Lookup = %v, %v", got, err)
		}

		gone, err := a.GC(ctx, []Owner{own(1), {ContainerID: "legacy", IfName: "eth3"}})
		if err != nil {
			t.Fatal(err)
		}
		want := []Lease{{ma("10.1.0.4"), own(2)}, {ma("10.1.0.5"), own(3)}, {ma("10.1.0.101"), Owner{}}}
		if !slices.Equal(gone, want) {
			t.Fatalf("GC released %v, want %v", gone, want)
		}
		s.Lock(ctx)
		left, _ := s.Leases()
		s.Unlock()
		if wantLeft := []Lease{{ma("10.1.0.3"), own(1)}, {ma("10.1.0.100"), Owner{ContainerID: "legacy"}}}; !slices.Equal(left, wantLeft) {
			t.Fatalf("after GC: %v, want %v", left, wantLeft)
		}
		if gone, _ := a.GC(ctx, nil); len(gone) != 2 {
			t.Fatalf("GC with no valid attachments released %v", gone)
		}
	})
}

func TestOwnerValidation(t *testing.T) {
	a := newAlloc(t, NewMemoryStore(), set("10.1.0.0/24"))
	long := string(make([]byte, MaxContainerIDLen+1))
	for _, o := range []Owner{
		{"", "eth0"}, {"a/b", "eth0"}, {"..", "eth0"}, {"a..b", "eth0"}, {"a\r\nb", "eth0"}, {"a b", "eth0"}, {"a\x00", "eth0"},
		{long, "eth0"}, {"c", ""}, {"c", "eth0/x"}, {"c", "a:b"}, {"c", "averyveryverylongname"}, {"c", ".."}, {"c", "\xff"},
	} {
		if _, err := a.Allocate(context.Background(), o); !errors.Is(err, ErrInvalid) {
			t.Errorf("Allocate(%q): %v, want ErrInvalid", o, err)
		}
	}
}

func TestNodeSubnets(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store) {
		ctx := context.Background()
		n, err := NewNodeSubnets(s, mp("10.200.0.0/22"), 24)
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range []string{"10.200.0.0/24", "10.200.1.0/24", "10.200.2.0/24", "10.200.3.0/24"} {
			if p, err := n.Assign(ctx, fmt.Sprintf("node%d", i)); err != nil || p != mp(want) {
				t.Fatalf("Assign(node%d) = %v, %v; want %s", i, p, err, want)
			}
		}
		if p, _ := n.Assign(ctx, "node1"); p != mp("10.200.1.0/24") {
			t.Fatalf("second Assign(node1) = %v", p)
		}
		if _, err := n.Assign(ctx, "node4"); !errors.Is(err, ErrExhausted) {
			t.Fatalf("fifth node: %v, want ErrExhausted", err)
		}
		if err := n.Release(ctx, "node1"); err != nil {
			t.Fatal(err)
		}
		if p, _ := n.Assign(ctx, "node4"); p != mp("10.200.1.0/24") {
			t.Fatalf("node4 got %v after node1 left", p)
		}
		m, err := n.List(ctx)
		if err != nil || len(m) != 4 || m["node4"] != mp("10.200.1.0/24") {
			t.Fatalf("List = %v, %v", m, err)
		}
		if _, err := n.Assign(ctx, "../x"); !errors.Is(err, ErrInvalid) {
			t.Errorf("bad node name: %v", err)
		}
	})
	if _, err := NewNodeSubnets(NewMemoryStore(), mp("10.200.0.0/16"), 16); !errors.Is(err, ErrInvalid) {
		t.Errorf("bits == cluster bits: %v", err)
	}
}
