package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// NodeSubnets carves a cluster CIDR into equal per-node subnets
// (10.200.0.0/16 into 10.200.N.0/24) and remembers which node has which.
// Its leases live in a Store like addresses do, keyed by each subnet's first
// address, so with a DiskStore the assignment survives restarts and crashes
// the same way address leases do. A node keeps its subnet until Release.
type NodeSubnets struct {
	store   Store
	cluster netip.Prefix
	bits    int
}

// nodeIfName marks a node's subnet lease; leases need an interface name.
const nodeIfName = "node"

// NewNodeSubnets returns the carving of cluster into subnets of prefix
// length bits, kept in store (which should hold nothing else).
func NewNodeSubnets(store Store, cluster netip.Prefix, bits int) (*NodeSubnets, error) {
	if !cluster.IsValid() || cluster.Masked() != cluster {
		return nil, fieldErr("cluster", cluster.String(), "not a CIDR subnet without host bits")
	}
	if bits <= cluster.Bits() || bits > cluster.Addr().BitLen() {
		return nil, fieldErr("bits", fmt.Sprint(bits), "must be longer than /%d and at most /%d", cluster.Bits(), cluster.Addr().BitLen())
	}
	return &NodeSubnets{store: store, cluster: cluster, bits: bits}, nil
}

func (n *NodeSubnets) owner(node string) (Owner, error) {
	o := Owner{ContainerID: node, IfName: nodeIfName}
	if err := validateName("node name", node, MaxContainerIDLen); err != nil {
		return o, err
	}
	return o, nil
}

// mine reports the subnet among addrs that belongs to this carving.
func (n *NodeSubnets) mine(addrs []netip.Addr) (netip.Prefix, bool) {
	for _, a := range addrs {
		p := netip.PrefixFrom(a, n.bits)
		if n.cluster.Contains(a) && p.Masked() == p {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// Assign returns the node's subnet, leasing the next free one (round-robin
// after the last one assigned) the first time it sees the node. It fails
// with ErrExhausted when every subnet is taken.
func (n *NodeSubnets) Assign(ctx context.Context, node string) (p netip.Prefix, err error) {
	o, err := n.owner(node)
	if err != nil {
		return p, fmt.Errorf("assign node subnet: %w", err)
	}
	if err := n.store.Lock(ctx); err != nil {
		return p, fmt.Errorf("assign subnet to node %q: %w", node, err)
	}
	defer func() {
		if uerr := n.store.Unlock(); err == nil && uerr != nil {
			err = fmt.Errorf("assign subnet to node %q: %w", node, uerr)
		}
	}()
	held, err := n.store.Owned(o)
	if err != nil {
		return p, err
	}
	if p, ok := n.mine(held); ok {
		return p, nil
	}
	last, err := n.store.LastReserved(0)
	if err != nil {
		return p, err
	}
	cur := n.cluster.Addr()
	if lp := netip.PrefixFrom(last, n.bits); n.cluster.Contains(last) && lp.Masked() == lp {
		cur = n.after(lp)
	}
	for start := cur; ; {
		ok, err := n.store.Reserve(cur, o, 0)
		if err != nil {
			return p, fmt.Errorf("assign subnet to node %q: %w", node, err)
		}
		if ok {
			return netip.PrefixFrom(cur, n.bits), nil
		}
		if cur = n.after(netip.PrefixFrom(cur, n.bits)); cur == start {
			return p, fmt.Errorf("assign subnet to node %q: %w: every /%d of %s is taken", node, ErrExhausted, n.bits, n.cluster)
		}
	}
}

// after returns the first address of the subnet following p, wrapping
// around to the start of the cluster CIDR.
func (n *NodeSubnets) after(p netip.Prefix) netip.Addr {
	next := lastAddr(p).Next()
	if !next.IsValid() || !n.cluster.Contains(next) {
		return n.cluster.Addr()
	}
	return next
}

// Release frees the node's subnet; it succeeds when the node has none.
func (n *NodeSubnets) Release(ctx context.Context, node string) error {
	o, err := n.owner(node)
	if err != nil {
		return fmt.Errorf("release node subnet: %w", err)
	}
	if err := n.store.Lock(ctx); err != nil {
		return fmt.Errorf("release subnet of node %q: %w", node, err)
	}
	held, err := n.store.Owned(o)
	for _, a := range held {
		err = errors.Join(err, n.store.Release(a))
	}
	if err = errors.Join(err, n.store.Unlock()); err != nil {
		return fmt.Errorf("release subnet of node %q: %w", node, err)
	}
	return nil
}

// List returns every node's subnet.
func (n *NodeSubnets) List(ctx context.Context) (map[string]netip.Prefix, error) {
	if err := n.store.Lock(ctx); err != nil {
		return nil, fmt.Errorf("list node subnets: %w", err)
	}
	leases, err := n.store.Leases()
	err = errors.Join(err, n.store.Unlock())
	if err != nil {
		return nil, fmt.Errorf("list node subnets: %w", err)
	}
	out := map[string]netip.Prefix{}
	for _, l := range leases {
		if p, ok := n.mine([]netip.Addr{l.Addr}); ok && l.Owner.IfName == nodeIfName {
			out[l.Owner.ContainerID] = p
		}
	}
	return out, nil
}
