package nat_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/nat"
	"github.com/podnet/podnet/netns"
)

func ExampleNetworkMasquerade_Rules() {
	m := nat.NetworkMasquerade{Network: "cbr0", Subnets: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24")}}
	fake := iptables.NewFake()
	if err := m.Ensure(context.Background(), fake); err != nil {
		log.Fatal(err)
	}
	fmt.Print(fake.Dump(iptables.IPv4))
	// Output:
	// *nat
	// :PREROUTING ACCEPT
	// :INPUT ACCEPT
	// :OUTPUT ACCEPT
	// :POSTROUTING ACCEPT
	// :PODNET-MASQ-KT4DQWV2HPXJMLKJ -
	// -A POSTROUTING -s 10.200.0.0/24 -m comment --comment "podnet masquerade: cbr0" -j PODNET-MASQ-KT4DQWV2HPXJMLKJ
	// -A PODNET-MASQ-KT4DQWV2HPXJMLKJ -d 224.0.0.0/4 -j RETURN
	// -A PODNET-MASQ-KT4DQWV2HPXJMLKJ ! -d 10.200.0.0/24 -j MASQUERADE
	// COMMIT
}

// Masquerade a network's pods in a node namespace, and remove a migrated
// container's reference-plugin chain.
func ExampleNetworkMasquerade_Ensure() {
	node, err := netns.OpenName("node0")
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	k := iptables.NewKernel(node)
	ctx := context.Background()
	m := nat.NetworkMasquerade{Network: "cbr0", Subnets: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24")}}
	if err := m.Ensure(ctx, k); err != nil {
		log.Fatal(err)
	}
	if _, err := nat.DeleteRefChains(ctx, k, "cbr0", "0123abcd"); err != nil {
		log.Fatal(err)
	}
}
