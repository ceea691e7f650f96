package ipam

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// TestLazyIndexAgreesWithMaps applies random leases and releases to a lazy
// index and to a built one, and checks after every step that both give the
// same answers. The pool has addresses that are prefixes of others
// (10.0.0.1, 10.0.0.10, 10.0.0.100) and owners whose IDs are prefixes of
// others, and legacy owners without an interface name: what a search of
// the journal's text could confuse.
func TestLazyIndexAgreesWithMaps(t *testing.T) {
	var pool []netip.Addr
	for _, s := range []string{"10.0.0.1", "10.0.0.10", "10.0.0.100", "10.0.0.2", "fd00::1", "fd00::10", "fd00::1:0"} {
		pool = append(pool, netip.MustParseAddr(s))
	}
	owners := []Owner{
		{ContainerID: "c1", IfName: "eth0"},
		{ContainerID: "c1", IfName: "eth1"},
		{ContainerID: "c10", IfName: "eth0"},
		{ContainerID: "c1"}, // legacy: no interface name
		{ContainerID: "10.0.0.1", IfName: "eth0"},
		{ContainerID: "x", IfName: "10.0.0.1"},
	}
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 1))
		lazy := &index{lazy: true, log: []byte("\n")}
		full := newIndex()
		for step := range 60 {
			a := pool[r.IntN(len(pool))]
			what := ""
			if r.IntN(3) == 0 {
				what = fmt.Sprintf("remove %s", a)
				if lazy.remove(a) != full.remove(a) {
					t.Fatalf("seed %d step %d: %s: lazy and built disagree on whether it was leased", seed, step, what)
				}
			} else {
				o := owners[r.IntN(len(owners))]
				what = fmt.Sprintf("add %s %v", a, o)
				if err := lazy.add(a, o); err != nil {
					t.Fatal(err)
				}
				full.add(a, o)
			}
			lazy.lookups = 0 // keep it lazy
			for _, p := range pool {
				if lazy.has(p) != full.has(p) {
					t.Fatalf("seed %d step %d after %s: has(%s) lazy %v, built %v\nlog %q", seed, step, what, p, lazy.has(p), full.has(p), lazy.log)
				}
			}
			for _, o := range owners {
				// owned may build the maps (an owner in many records):
				// ask a copy, and search the journal itself too.
				cp := &index{lazy: true, log: slices.Clip(lazy.log)}
				if l, f := cp.owned(o), full.owned(o); !slices.Equal(l, f) {
					t.Fatalf("seed %d step %d after %s: owned(%v) lazy %v, built %v\nlog %q", seed, step, what, o, l, f, lazy.log)
				}
				l, _ := lazy.ownedLazy(o, 0)
				slices.SortFunc(l, netip.Addr.Compare)
				f, _ := full.ownerLeases(o, 0)
				f = slices.Clone(f)
				slices.SortFunc(f, netip.Addr.Compare)
				if !slices.Equal(l, f) {
					t.Fatalf("seed %d step %d after %s: records of exactly %v: lazy %v, built %v\nlog %q", seed, step, what, o, l, f, lazy.log)
				}
			}
			if !lazy.lazy {
				t.Fatal("the index under test built its maps")
			}
			lazy.lookups = 0
		}
		want, _ := full.leases()
		got, err := lazy.leases() // builds
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("seed %d: built from the log: %v, %v; want %v", seed, got, err, want)
		}
	}
}

// TestLazyIndexSize: the store never leases an address twice without a
// release between, and then the lazy count of leases is exact.
func TestLazyIndexSize(t *testing.T) {
	x := &index{lazy: true, log: []byte("\n")}
	for _, s := range []string{"10.0.0.1", "10.0.0.10", "10.0.0.2"} {
		x.add(netip.MustParseAddr(s), Owner{ContainerID: "c" + s, IfName: "eth0"})
	}
	x.remove(netip.MustParseAddr("10.0.0.1"))
	x.remove(netip.MustParseAddr("10.0.0.7")) // not leased: nothing recorded
	if n := x.size(); n != 2 {
		t.Errorf("size = %d, want 2; log %q", n, x.log)
	}
}

// TestLazyIndexBuildsForLongLivedUsers: after many searches the index
// builds its maps, so a long-lived process does not search the journal on
// every call.
func TestLazyIndexBuildsForLongLivedUsers(t *testing.T) {
	x := &index{lazy: true, log: []byte("\n+10.0.0.5\tc1\teth0\n")}
	for range lazyLookups + 1 {
		if !x.has(netip.MustParseAddr("10.0.0.5")) {
			t.Fatal("lease not found")
		}
	}
	if x.lazy {
		t.Error("still lazy after many searches")
	}
	if !x.has(netip.MustParseAddr("10.0.0.5")) {
		t.Error("lease lost when the maps were built")
	}
}

// TestLazyIndexBadRecord: a journal that cannot be replayed is an error
// when the maps are built, and the disk store then rescans its directory.
func TestLazyIndexBadRecord(t *testing.T) {
	x := &index{lazy: true, log: []byte("\n+10.0.0.5\tc1\teth0\n?junk\n")}
	if err := x.build(); err == nil {
		t.Fatal("build of a malformed journal succeeded")
	}
}

// TestLazyIndexOwnerInManyRecords: an owner named in many records (leased
// and released over and over before a compaction) is answered from the
// maps, which the index then builds, instead of one search per record.
func TestLazyIndexOwnerInManyRecords(t *testing.T) {
	x := &index{lazy: true, log: []byte("\n")}
	o := Owner{ContainerID: "c1", IfName: "eth0"}
	a := netip.MustParseAddr("10.0.0.2")
	for range 5 {
		x.add(a, o)
		x.remove(a)
		a = a.Next()
	}
	x.add(a, o)
	if got := x.owned(o); !slices.Equal(got, []netip.Addr{a}) {
		t.Errorf("owned = %v, want [%s]", got, a)
	}
	if x.lazy {
		t.Error("still lazy after an owner named in 6 records")
	}
}
