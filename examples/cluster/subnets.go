package main

import (
	"fmt"
	"net/netip"
)

// nodeSubnets carves n subnets of the given size out of cidr, in order
// (10.200.0.0/16 → 10.200.0.0/24, 10.200.1.0/24 …).
func nodeSubnets(cidr netip.Prefix, bits, n int, _ string) ([]netip.Prefix, error) {
	if bits < cidr.Bits() || n > 1<<(bits-cidr.Bits()) {
		return nil, fmt.Errorf("%v has no room for %d /%d subnets", cidr, n, bits)
	}
	out := make([]netip.Prefix, 0, n)
	a := cidr.Masked().Addr()
	for range n {
		p := netip.PrefixFrom(a, bits)
		out = append(out, p)
		last := lastAddr(p)
		a = last.Next()
	}
	return out, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As16()
	off := 0
	if p.Addr().Is4() {
		off = 12
	}
	hostBits := p.Addr().BitLen() - p.Bits()
	for i := 15; i >= off && hostBits > 0; i-- {
		k := min(hostBits, 8)
		b[i] |= byte(1<<k - 1)
		hostBits -= k
	}
	a := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		a = a.Unmap()
	}
	return a
}
