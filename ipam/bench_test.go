package ipam

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"testing"
)

// fill reserves n addresses of a /16 directly through the store.
func fill(b *testing.B, s Store, n int) {
	b.Helper()
	ctx := context.Background()
	if err := s.Lock(ctx); err != nil {
		b.Fatal(err)
	}
	a := netip.MustParseAddr("10.10.0.2")
	for i := 0; i < n; i++ {
		if _, err := s.Reserve(a, Owner{ContainerID: fmt.Sprintf("fill%d", i), IfName: "eth0"}, 0); err != nil {
			b.Fatal(err)
		}
		a = a.Next()
	}
	if err := s.Unlock(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkDiskAllocateRelease measures one Allocate and one Release with
// the disk store in a /16 that is 1 %, 50 % and 99 % full.
func BenchmarkDiskAllocateRelease(b *testing.B) {
	const size = 65534 - 1 // allocatable addresses of a /16 without the gateway
	for _, pct := range []int{1, 50, 99} {
		b.Run(fmt.Sprintf("full=%d%%", pct), func(b *testing.B) {
			s, err := NewDiskStore(b.TempDir(), "net")
			if err != nil {
				b.Fatal(err)
			}
			fill(b, s, size*pct/100)
			a, err := NewAllocator(s, set("10.10.0.0/16"))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			o := Owner{ContainerID: "bench", IfName: "eth0"}
			b.ResetTimer()
			for b.Loop() {
				if _, err := a.Allocate(ctx, o); err != nil {
					b.Fatal(err)
				}
				if _, err := a.Release(ctx, o); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDiskLookup measures a lookup by owner among 10,000 leases.
func BenchmarkDiskLookup(b *testing.B) {
	s, err := NewDiskStore(b.TempDir(), "net")
	if err != nil {
		b.Fatal(err)
	}
	fill(b, s, 10000)
	a, err := NewAllocator(s, set("10.10.0.0/16"))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	o := Owner{ContainerID: "fill5000", IfName: "eth0"}
	for b.Loop() {
		if _, err := a.Lookup(ctx, o); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDiskOpenLookup is what one plugin process pays: open the store
// (loading the index file) and look up one owner among 10,000 leases.
func BenchmarkDiskOpenLookup(b *testing.B) {
	dir := b.TempDir()
	s, err := NewDiskStore(dir, "net")
	if err != nil {
		b.Fatal(err)
	}
	fill(b, s, 10000)
	ctx := context.Background()
	o := Owner{ContainerID: "fill5000", IfName: "eth0"}
	for b.Loop() {
		s, err := NewDiskStore(dir, "net")
		if err != nil {
			b.Fatal(err)
		}
		a, _ := NewAllocator(s, set("10.10.0.0/16"))
		if _, err := a.Lookup(ctx, o); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDiskOpenAllocate is what one CNI ADD pays in IPAM with N leases
// already on the node: open the store as a new process does, allocate for
// a new owner, and (outside the timing's point, to keep N constant)
// release it again.
func BenchmarkDiskOpenAllocate(b *testing.B) {
	for _, n := range []int{0, 500, 5000} {
		b.Run(fmt.Sprintf("leases=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			s, err := NewDiskStore(dir, "net")
			if err != nil {
				b.Fatal(err)
			}
			fill(b, s, n)
			ctx := context.Background()
			i := 0
			for b.Loop() {
				// Every pod has its own container ID.
				i++
				o := Owner{ContainerID: fmt.Sprintf("%064x", i), IfName: "eth0"}
				s, err := NewDiskStore(dir, "net")
				if err != nil {
					b.Fatal(err)
				}
				a, _ := NewAllocator(s, set("10.10.0.0/16"))
				if _, err := a.Allocate(ctx, o); err != nil {
					b.Fatal(err)
				}
				if _, err := a.Release(ctx, o); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLazyOwned is the search an ADD makes in a journal of 500
// leases whose owners have 64-character container IDs, as runtimes give.
func BenchmarkLazyOwned(b *testing.B) {
	log := []byte("\n")
	a := netip.MustParseAddr("10.10.0.2")
	for i := range 500 {
		log = appendRecord(log, a, Owner{ContainerID: fmt.Sprintf("%x", sha256.Sum256(fmt.Append(nil, i))), IfName: "eth0"})
		a = a.Next()
	}
	x := &index{lazy: true, log: log}
	o := Owner{ContainerID: fmt.Sprintf("%x", sha256.Sum256([]byte("new pod"))), IfName: "eth0"}
	for b.Loop() {
		x.lookups = 0
		x.owned(o)
	}
}
