package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Allocation is one leased address.
type Allocation struct {
	Set     int          // index of the range set it came from
	Address netip.Prefix // the address with its subnet's prefix length, e.g. 10.1.0.5/24
	Gateway netip.Addr   // the range's gateway
}

// Allocator hands out addresses from range sets, one address per set for
// each owner, keeping its leases in a Store. It follows host-local: each set
// continues round-robin after the address it reserved last, so a released
// address is not reused until the set has wrapped around (its neighbours'
// ARP and conntrack entries have long expired by then).
//
// An Allocator is safe for concurrent use when its Store is.
type Allocator struct {
	store Store
	sets  []RangeSet
}

// NewAllocator returns an allocator for the range sets, in order (the set
// index is the N of host-local's last_reserved_ip.N). The sets are
// canonicalized; an invalid or overlapping set yields a *FieldError.
func NewAllocator(store Store, sets ...RangeSet) (*Allocator, error) {
	if len(sets) == 0 {
		return nil, fieldErr("ranges", "", "no IP ranges specified")
	}
	a := &Allocator{store: store}
	for i, s := range sets {
		c, err := s.canonical(fmt.Sprintf("ranges[%d]", i))
		if err != nil {
			return nil, err
		}
		for j, prev := range a.sets {
			if prev.Overlaps(c) {
				return nil, fieldErr(fmt.Sprintf("ranges[%d]", i), c.String(), "overlaps range set %d (%s)", j, prev)
			}
		}
		a.sets = append(a.sets, c)
	}
	return a, nil
}

// Sets returns the canonical range sets.
func (a *Allocator) Sets() []RangeSet { return slices.Clone(a.sets) }

// Allocate leases one address from every range set to o and returns them in
// set order. Each requested address is taken from the first set that
// contains it; the other sets allocate round-robin.
//
// Allocate is idempotent: when o already holds an address in a set, that
// lease is returned (a runtime repeating an ADD gets the same answer instead
// of host-local's "duplicate allocation" error). It is all-or-nothing: when
// one set fails, the addresses reserved by this call are released.
//
// Errors: ErrInvalid for a bad owner, a requested address outside every set,
// or the network, broadcast or gateway address; ErrConflict when a requested
// address is leased to another owner, or o holds a different address in that
// set; ErrExhausted when a set has no free address.
func (a *Allocator) Allocate(ctx context.Context, o Owner, requested ...netip.Addr) ([]Allocation, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("allocate: %w", err)
	}
	want := make([]netip.Addr, len(a.sets))
	for _, r := range requested {
		r = r.Unmap()
		i := slices.IndexFunc(a.sets, func(s RangeSet) bool { return s.Contains(r) })
		if i < 0 || want[i].IsValid() {
			return nil, fmt.Errorf("allocate for %s: %w: requested address %s is in no range set or not the only one in its set", o, ErrInvalid, r)
		}
		want[i] = r
	}
	if err := a.store.Lock(ctx); err != nil {
		return nil, fmt.Errorf("allocate for %s: %w", o, err)
	}
	out, err := a.allocate(o, want)
	if uerr := a.store.Unlock(); err == nil && uerr != nil {
		err = uerr
	}
	if err != nil {
		return nil, fmt.Errorf("allocate for %s: %w", o, err)
	}
	return out, nil
}

func (a *Allocator) allocate(o Owner, want []netip.Addr) (out []Allocation, err error) {
	held, err := a.store.Owned(o)
	if err != nil {
		return nil, err
	}
	var reserved []netip.Addr
	defer func() {
		if err != nil {
			for _, r := range reserved {
				err = errors.Join(err, a.store.Release(r))
			}
		}
	}()
	for i, set := range a.sets {
		if j := slices.IndexFunc(held, set.Contains); j >= 0 {
			if want[i].IsValid() && want[i] != held[j] {
				return nil, fmt.Errorf("%w: range set %d: owner holds %s, requested %s", ErrConflict, i, held[j], want[i])
			}
			out = append(out, a.allocation(i, held[j]))
			continue
		}
		var addr netip.Addr
		if w := want[i]; w.IsValid() {
			r, _ := set.RangeFor(w)
			if !r.Allocatable(w) {
				return nil, fmt.Errorf("%w: requested address %s is the network, broadcast or gateway address of %s", ErrInvalid, w, r.Subnet)
			}
			ok, err := a.store.Reserve(w, o, i)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, fmt.Errorf("%w: requested address %s is already leased", ErrConflict, w)
			}
			addr = w
		} else if addr, err = a.next(i, o); err != nil {
			return nil, err
		}
		reserved = append(reserved, addr)
		out = append(out, a.allocation(i, addr))
	}
	return out, nil
}

func (a *Allocator) allocation(set int, addr netip.Addr) Allocation {
	r, _ := a.sets[set].RangeFor(addr)
	return Allocation{Set: set, Address: netip.PrefixFrom(addr, r.Subnet.Bits()), Gateway: r.Gateway}
}

// next reserves the first free address after the last one reserved from the
// set, wrapping around from the last range to the first, as host-local's
// iterator does.
func (a *Allocator) next(set int, o Owner) (netip.Addr, error) {
	s := a.sets[set]
	last, err := a.store.LastReserved(set)
	if err != nil {
		return netip.Addr{}, err
	}
	ri, cur := 0, netip.Addr{}
	if i := slices.IndexFunc(s, func(r Range) bool { return r.Contains(last) }); i >= 0 {
		ri, cur = i, last
	}
	var start netip.Addr
	for {
		r := s[ri]
		switch {
		case !cur.IsValid():
			cur = r.RangeStart
		case cur == r.RangeEnd:
			ri = (ri + 1) % len(s)
			r = s[ri]
			cur = r.RangeStart
		default:
			cur = cur.Next()
		}
		if !start.IsValid() {
			start = cur
		} else if cur == start {
			return netip.Addr{}, fmt.Errorf("%w: no free address in range set %d (%s)", ErrExhausted, set, s)
		}
		if !r.Allocatable(cur) {
			continue
		}
		ok, err := a.store.Reserve(cur, o, set)
		if err != nil {
			return netip.Addr{}, err
		}
		if ok {
			return cur, nil
		}
	}
}

// Release removes every lease of o and returns the released addresses. It
// succeeds when o holds nothing (CNI DEL semantics).
func (a *Allocator) Release(ctx context.Context, o Owner) ([]netip.Addr, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	if err := a.store.Lock(ctx); err != nil {
		return nil, fmt.Errorf("release %s: %w", o, err)
	}
	held, err := a.store.Owned(o)
	for _, addr := range held {
		err = errors.Join(err, a.store.Release(addr))
	}
	err = errors.Join(err, a.store.Unlock())
	if err != nil {
		return nil, fmt.Errorf("release %s: %w", o, err)
	}
	return held, nil
}

// Lookup returns the leases of o in the allocator's range sets, in set
// order, or an error matching ErrNotFound when there are none.
func (a *Allocator) Lookup(ctx context.Context, o Owner) ([]Allocation, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("look up: %w", err)
	}
	if err := a.store.Lock(ctx); err != nil {
		return nil, fmt.Errorf("look up %s: %w", o, err)
	}
	held, err := a.store.Owned(o)
	err = errors.Join(err, a.store.Unlock())
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", o, err)
	}
	var out []Allocation
	for i, set := range a.sets {
		for _, h := range held {
			if set.Contains(h) {
				out = append(out, a.allocation(i, h))
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("look up %s: %w", o, ErrNotFound)
	}
	return out, nil
}

// GC releases every lease in the store whose owner is not in valid (the
// runtime's cni.dev/valid-attachments) and returns the released leases. A
// legacy lease without an interface name survives when its container ID is
// valid with any interface; a lease with an unreadable owner is released.
// Like CNI GC, an empty valid list releases everything.
func (a *Allocator) GC(ctx context.Context, valid []Owner) ([]Lease, error) {
	return GC(ctx, a.store, valid)
}

// GC is Allocator.GC for a store without range sets, as the CNI GC verb
// needs: it releases leases of every range, even ones no longer configured.
func GC(ctx context.Context, store Store, valid []Owner) ([]Lease, error) {
	keep := make(map[Owner]bool, len(valid))
	keepID := make(map[string]bool, len(valid))
	for _, o := range valid {
		keep[o] = true
		keepID[o.ContainerID] = true
	}
	if err := store.Lock(ctx); err != nil {
		return nil, fmt.Errorf("collect garbage: %w", err)
	}
	leases, err := store.Leases()
	var gone []Lease
	for _, l := range leases {
		if keep[l.Owner] || (l.Owner.IfName == "" && l.Owner.ContainerID != "" && keepID[l.Owner.ContainerID]) {
			continue
		}
		if rerr := store.Release(l.Addr); rerr != nil {
			err = errors.Join(err, rerr)
			continue
		}
		gone = append(gone, l)
	}
	err = errors.Join(err, store.Unlock())
	if err != nil {
		return gone, fmt.Errorf("collect garbage: %w", err)
	}
	return gone, nil
}
