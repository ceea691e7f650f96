package main

import (
	"context"
	"net/netip"

	"github.com/podnet/podnet/ipam"
)

// nodeSubnets gives each worker its pod subnet of the given size, carved
// from cidr by ipam.NodeSubnets (10.200.0.0/16 → 10.200.N.0/24), recorded
// under dir so a node keeps its subnet for as long as the record lives.
func nodeSubnets(ctx context.Context, cidr netip.Prefix, bits int, nodes []string, dir string) ([]netip.Prefix, error) {
	store, err := ipam.NewDiskStore(dir, "node-subnets")
	if err != nil {
		return nil, err
	}
	ns, err := ipam.NewNodeSubnets(store, cidr, bits)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(nodes))
	for _, n := range nodes {
		p, err := ns.Assign(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}
