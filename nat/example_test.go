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

// A unit test without root: the iptables Backend over an iptables.Fake,
// whose Dump shows what iptables-save would.
func ExampleIPTables() {
	m := nat.NetworkMasquerade{Network: "cbr0", Subnets: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24")}}
	fake := iptables.NewFake()
	if err := m.Ensure(context.Background(), nat.IPTables(fake)); err != nil {
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

// Masquerade a network's pods in a node namespace, in the backend a
// configuration names (the bridge plugin's ipMasqBackend): the Backend is
// picked once and every call takes it.
func ExampleNetworkMasquerade_Ensure() {
	node, err := netns.OpenName("node0")
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	ipMasqBackend := "nftables"
	backend := nat.IPTables(iptables.NewKernel(node))
	if ipMasqBackend == "nftables" {
		backend = nat.Nftables(node)
	}
	ctx := context.Background()
	m := nat.NetworkMasquerade{Network: "cbr0", Subnets: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24")}}
	if err := m.Ensure(ctx, backend); err != nil {
		log.Fatal(err)
	}
	if err := m.Check(ctx, backend); err != nil {
		log.Fatal(err)
	}
}

// A node agent's masquerade in the iptables backend the node's kubelet and
// kube-proxy use, with the cluster network exempt.
func ExampleIPTables_detectMode() {
	node, err := netns.OpenName("node0")
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	ctx := context.Background()
	mode, err := iptables.DetectMode(ctx, node)
	if err != nil {
		log.Fatal(err)
	}
	k, err := iptables.NewKernelMode(node, mode)
	if err != nil {
		log.Fatal(err)
	}
	m := nat.NetworkMasquerade{Network: "agent", Subnets: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		Exempt: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, RandomFully: true}
	if err := m.Ensure(ctx, nat.IPTables(k)); err != nil {
		log.Fatal(err)
	}
}
