package ipam

import (
	"bytes"
	"context"
	"net/netip"
	"slices"
)

// Lease is an address and the attachment it belongs to. A lease whose file
// could not be parsed (for instance an empty file left by a crashed
// host-local) has a zero Owner: its address stays taken until GC or an
// operator removes it.
type Lease struct {
	Addr  netip.Addr
	Owner Owner
}

// Store keeps leases. Every method but Lock must be called between Lock and
// Unlock; the lock is what makes a read-modify-write sequence (find a free
// address, reserve it) atomic across goroutines and, for the disk store,
// across processes.
//
// Both stores in this package implement it: MemoryStore for unit tests and
// DiskStore for host-local's files.
type Store interface {
	// Lock waits until the caller has exclusive use of the store or ctx is
	// done.
	Lock(ctx context.Context) error
	// Unlock makes the changes visible to other users and releases the lock.
	Unlock() error
	// Reserve leases a to o and records a as the last address reserved from
	// range set number set. It reports false when a is already leased.
	Reserve(a netip.Addr, o Owner, set int) (bool, error)
	// Release removes the lease on a; it is not an error if there is none.
	Release(a netip.Addr) error
	// LastReserved returns the address last reserved from range set number
	// set, or the zero Addr.
	LastReserved(set int) (netip.Addr, error)
	// Owned returns the addresses leased to o. Like host-local it matches
	// leases of (ContainerID, IfName) and, when there are none, legacy leases
	// that carry only the container ID.
	Owned(o Owner) ([]netip.Addr, error)
	// Leases returns every lease, sorted by address.
	Leases() ([]Lease, error)
}

// index is the in-memory view both stores use: address → owner and
// owner → addresses.
//
// A DiskStore's index may instead be lazy: it then holds the journal
// records it would be built from (see index.go), each after a '\n', and
// answers a lookup by searching them in place. A plugin process that makes
// one call then reads a few kilobytes and builds nothing, instead of maps of
// every lease on the node; the maps are built when something needs them
// all (Leases, a rewrite of the journal, an owner that cannot be recorded).
type index struct {
	lazy    bool
	log     []byte // while lazy: journal records, each after a '\n'
	lookups int    // while lazy: searches so far; many mean a long-lived user
	byAddr  map[netip.Addr]Owner
	byOwner map[Owner][]netip.Addr
}

func newIndex() *index {
	return &index{byAddr: map[netip.Addr]Owner{}, byOwner: map[Owner][]netip.Addr{}}
}

// lazyLookups is how many searches a lazy index answers before it builds
// its maps: a plugin process needs a few, a long-lived process many.
const lazyLookups = 32

// searched counts one search of a lazy index and builds the maps once the
// index has been searched often enough to pay for them.
func (x *index) searched() {
	if x.lookups++; x.lookups > lazyLookups {
		x.build() // on error it stays lazy; the error shows when every lease is needed
	}
}

// has reports whether a is leased.
func (x *index) has(a netip.Addr) bool {
	if x.searched(); x.lazy {
		_, op := x.lastRecord(a.AppendTo(nil))
		return op == '+'
	}
	_, ok := x.byAddr[a]
	return ok
}

// add leases a to o, replacing any lease a had.
func (x *index) add(a netip.Addr, o Owner) error {
	if x.lazy {
		if recordable(o) {
			x.log = appendRecord(x.log, a, o)
			return nil
		}
		if err := x.build(); err != nil {
			return err
		}
	}
	if _, ok := x.byAddr[a]; ok {
		x.remove(a)
	}
	x.byAddr[a] = o
	x.byOwner[o] = append(x.byOwner[o], a)
	return nil
}

// remove drops the lease on a, and reports whether there was one.
func (x *index) remove(a netip.Addr) bool {
	if x.lazy {
		if !x.has(a) {
			return false
		}
		x.log = appendRemoval(x.log, a)
		return true
	}
	o, ok := x.byAddr[a]
	if !ok {
		return false
	}
	delete(x.byAddr, a)
	l := x.byOwner[o]
	if i := slices.Index(l, a); i >= 0 {
		l = slices.Delete(l, i, i+1)
	}
	if len(l) == 0 {
		delete(x.byOwner, o)
	} else {
		x.byOwner[o] = l
	}
	return true
}

// owned returns the addresses leased to o, sorted; like host-local, those
// of the bare container ID when o.IfName has none.
func (x *index) owned(o Owner) []netip.Addr {
	x.searched()
	// An owner named in many records (the journal keeps those of released
	// leases until it is compacted) is cheaper to answer from the maps.
	limit := 4
	for {
		l, ok := x.ownerLeases(o, limit)
		if ok && len(l) == 0 && o.IfName != "" {
			l, ok = x.ownerLeases(Owner{ContainerID: o.ContainerID}, limit)
		}
		if ok {
			out := slices.Clone(l)
			slices.SortFunc(out, netip.Addr.Compare)
			return out
		}
		if x.build() != nil {
			limit = 0 // the journal cannot be replayed: search it all
		}
	}
}

// ownerLeases returns the addresses leased to exactly o; a lazy index may
// give up, returning false, when o is named in more than limit records.
func (x *index) ownerLeases(o Owner, limit int) ([]netip.Addr, bool) {
	if x.lazy {
		return x.ownedLazy(o, limit)
	}
	return x.byOwner[o], true
}

// leases returns every lease, sorted by address.
func (x *index) leases() ([]Lease, error) {
	if err := x.build(); err != nil {
		return nil, err
	}
	out := make([]Lease, 0, len(x.byAddr))
	for a, o := range x.byAddr {
		out = append(out, Lease{Addr: a, Owner: o})
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

// size estimates the number of leases without building anything.
func (x *index) size() int {
	if x.lazy {
		return max(bytes.Count(x.log, []byte("\n+"))-bytes.Count(x.log, []byte("\n-")), 0)
	}
	return len(x.byAddr)
}

// MemoryStore is a Store in memory, safe for concurrent use, for tests of
// code that allocates addresses. Its zero value is not usable; call
// NewMemoryStore.
type MemoryStore struct {
	sem  chan struct{}
	idx  *index
	last map[int]netip.Addr
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{sem: make(chan struct{}, 1), idx: newIndex(), last: map[int]netip.Addr{}}
}

// Lock implements Store.
func (m *MemoryStore) Lock(ctx context.Context) error {
	select {
	case m.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Unlock implements Store.
func (m *MemoryStore) Unlock() error {
	<-m.sem
	return nil
}

// Reserve implements Store.
func (m *MemoryStore) Reserve(a netip.Addr, o Owner, set int) (bool, error) {
	if m.idx.has(a) {
		return false, nil
	}
	if err := m.idx.add(a, o); err != nil {
		return false, err
	}
	m.last[set] = a
	return true, nil
}

// Release implements Store.
func (m *MemoryStore) Release(a netip.Addr) error {
	m.idx.remove(a)
	return nil
}

// LastReserved implements Store.
func (m *MemoryStore) LastReserved(set int) (netip.Addr, error) { return m.last[set], nil }

// Owned implements Store.
func (m *MemoryStore) Owned(o Owner) ([]netip.Addr, error) { return m.idx.owned(o), nil }

// Leases implements Store.
func (m *MemoryStore) Leases() ([]Lease, error) { return m.idx.leases() }
