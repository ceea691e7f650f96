package nat_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/podnet/podnet/nat"
	"github.com/podnet/podnet/netns"
)

func ExampleRule_Spec() {
	pods := netip.MustParsePrefix("10.200.0.0/24")
	r := nat.Rule{
		Source:      nat.Addr{Prefix: pods},
		Destination: nat.Addr{Prefix: pods, Not: true},
		Matches:     []nat.Match{nat.Comment("pod egress")},
		Target:      nat.Masquerade{RandomFully: true},
	}
	s, _ := r.Spec(nat.IPv4)
	fmt.Println(s)
	// Output: -s 10.200.0.0/24 ! -d 10.200.0.0/24 -m comment --comment "pod egress" -j MASQUERADE --random-fully
}

func ExampleTransaction() {
	svc := nat.Chain{Family: nat.IPv4, Table: nat.TableNAT, Name: "PODNET-SVC-WEB"}
	tx := nat.NewTransaction().
		Declare(svc, nat.Rule{Protocol: nat.TCP, Target: nat.DNATTo(netip.MustParseAddrPort("10.200.0.5:8080"))}).
		EnsureRule(nat.Chain{Family: nat.IPv4, Table: nat.TableNAT, Name: "PREROUTING"}, true,
			nat.Rule{Destination: nat.Addr{Prefix: netip.MustParsePrefix("10.96.0.10/32")}, Target: nat.Jump(svc.Name)})
	text, _ := tx.Text(nat.IPv4)
	fmt.Print(text)
	// Output:
	// *nat
	// :PODNET-SVC-WEB - [0:0]
	// -A PODNET-SVC-WEB -p tcp -j DNAT --to-destination 10.200.0.5:8080
	// -I PREROUTING 1 -d 10.96.0.10/32 -j PODNET-SVC-WEB
	// COMMIT
}

func ExampleFake() {
	fake := nat.NewFake()
	m := nat.NetworkMasquerade{Network: "cbr0", Subnets: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24")}}
	if err := m.Ensure(context.Background(), fake); err != nil {
		log.Fatal(err)
	}
	fmt.Print(fake.Dump(nat.IPv4))
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
	k := nat.NewKernel(node)
	ctx := context.Background()
	m := nat.NetworkMasquerade{Network: "cbr0", Subnets: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/24")}}
	if err := m.Ensure(ctx, k); err != nil {
		log.Fatal(err)
	}
	if _, err := nat.DeleteRefChains(ctx, k, "cbr0", "0123abcd"); err != nil {
		log.Fatal(err)
	}
}

// Show the NAT translations of flows to a VIP, as conntrack -L would.
func ExampleListFlows() {
	node, err := netns.OpenName("node0")
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	flows, err := nat.ListFlows(context.Background(), node, nat.FlowFilter{Protocol: nat.UDP, OrigDst: netip.MustParseAddr("10.96.0.10")})
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range flows {
		fmt.Println(f)
	}
}
