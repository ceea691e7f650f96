package iptables_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
)

func ExampleRule_Spec() {
	pods := netip.MustParsePrefix("10.200.0.0/24")
	r := iptables.Rule{
		Source:      iptables.Addr{Prefix: pods},
		Destination: iptables.Addr{Prefix: pods, Not: true},
		Matches:     []iptables.Match{iptables.Comment("pod egress")},
		Target:      iptables.Masquerade{RandomFully: true},
	}
	s, _ := r.Spec(iptables.IPv4)
	fmt.Println(s)
	// Output: -s 10.200.0.0/24 ! -d 10.200.0.0/24 -m comment --comment "pod egress" -j MASQUERADE --random-fully
}

func ExampleTransaction() {
	svc := iptables.Chain{Family: iptables.IPv4, Table: iptables.TableNAT, Name: "PODNET-SVC-WEB"}
	tx := iptables.NewTransaction().
		Declare(svc, iptables.Rule{Protocol: iptables.TCP, Target: iptables.DNATTo(netip.MustParseAddrPort("10.200.0.5:8080"))}).
		EnsureRule(iptables.Chain{Family: iptables.IPv4, Table: iptables.TableNAT, Name: "PREROUTING"}, true,
			iptables.Rule{Destination: iptables.Addr{Prefix: netip.MustParsePrefix("10.96.0.10/32")}, Target: iptables.Jump(svc.Name)})
	text, _ := tx.Text(iptables.IPv4)
	fmt.Print(text)
	// Output:
	// *nat
	// :PODNET-SVC-WEB - [0:0]
	// -A PODNET-SVC-WEB -p tcp -j DNAT --to-destination 10.200.0.5:8080
	// -I PREROUTING 1 -d 10.96.0.10/32 -j PODNET-SVC-WEB
	// COMMIT
}

func ExampleFake() {
	fake := iptables.NewFake()
	web := iptables.Chain{Family: iptables.IPv4, Table: iptables.TableNAT, Name: "PODNET-WEB"}
	tx := iptables.NewTransaction().
		Declare(web, iptables.Rule{Protocol: iptables.TCP, Target: iptables.DNATTo(netip.MustParseAddrPort("10.200.0.5:8080"))}).
		Prune(iptables.IPv4, iptables.TableNAT, iptables.PrefixOwner("PODNET"))
	if err := fake.Run(context.Background(), tx); err != nil {
		log.Fatal(err)
	}
	fmt.Print(fake.Dump(iptables.IPv4))
	// Output:
	// *nat
	// :PREROUTING ACCEPT
	// :INPUT ACCEPT
	// :OUTPUT ACCEPT
	// :POSTROUTING ACCEPT
	// :PODNET-WEB -
	// -A PODNET-WEB -p tcp -j DNAT --to-destination 10.200.0.5:8080
	// COMMIT
}

// Apply a transaction to the iptables of a node namespace.
func ExampleKernel_Run() {
	node, err := netns.OpenName("node0")
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	k := iptables.NewKernel(node)
	web := iptables.Chain{Family: iptables.IPv4, Table: iptables.TableNAT, Name: "PODNET-WEB"}
	tx := iptables.NewTransaction().
		Declare(web, iptables.Rule{Protocol: iptables.TCP, Target: iptables.DNATTo(netip.MustParseAddrPort("10.200.0.5:8080"))}).
		EnsureRule(iptables.Chain{Family: iptables.IPv4, Table: iptables.TableNAT, Name: "PREROUTING"}, true,
			iptables.Rule{Destination: iptables.Addr{Prefix: netip.MustParsePrefix("10.96.0.10/32")}, Target: iptables.Jump(web.Name)})
	if err := k.Run(context.Background(), tx); err != nil {
		log.Fatal(err)
	}
}
