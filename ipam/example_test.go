package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/podnet/podnet/ipam"
)

func ExampleAllocator() {
	ctx := context.Background()
	set := ipam.RangeSet{{Subnet: netip.MustParsePrefix("10.200.1.0/24")}}
	alloc, err := ipam.NewAllocator(ipam.NewMemoryStore(), set)
	if err != nil {
		panic(err)
	}
	pod := ipam.Owner{ContainerID: "3f2a9c", IfName: "eth0"}

	got, _ := alloc.Allocate(ctx, pod)
	fmt.Println(got[0].Address, "via", got[0].Gateway)

	again, _ := alloc.Allocate(ctx, pod) // a repeated ADD gets the same lease
	fmt.Println(again[0].Address)

	released, _ := alloc.Release(ctx, pod)
	fmt.Println("released", released)
	// Output:
	// 10.200.1.2/24 via 10.200.1.1
	// 10.200.1.2/24
	// released [10.200.1.2]
}

func ExampleRange_Canonical() {
	r, err := ipam.Range{Subnet: netip.MustParsePrefix("10.1.0.0/24")}.Canonical()
	fmt.Println(r.RangeStart, r.RangeEnd, r.Gateway, err)

	_, err = ipam.Range{Subnet: netip.MustParsePrefix("10.1.0.5/24")}.Canonical()
	fmt.Println(err)
	fmt.Println(errors.Is(err, ipam.ErrInvalid))
	// Output:
	// 10.1.0.1 10.1.0.254 10.1.0.1 <nil>
	// subnet "10.1.0.5/24": host bits set; the network address is 10.1.0.0
	// true
}

func ExampleParseConfig() {
	conf := []byte(`{
		"cniVersion": "1.0.0",
		"name": "pods",
		"ipam": {
			"type": "host-local",
			"ranges": [
				[{"subnet": "10.200.1.0/24", "rangeStart": "10.200.1.10"}],
				[{"subnet": "fd00:200:1::/64"}]
			]
		}
	}`)
	c, err := ipam.ParseConfig(conf, "IgnoreUnknown=1;IP=10.200.1.20")
	if err != nil {
		panic(err)
	}
	fmt.Println(c.Network, c.DataDir, c.Ranges[0], c.Ranges[1][0].RangeEnd, c.IPs)
	// Output:
	// pods /var/lib/cni/networks 10.200.1.10-10.200.1.254 fd00:200:1:0:ffff:ffff:ffff:ffff [10.200.1.20]
}

func ExampleNodeSubnets() {
	ctx := context.Background()
	subnets, _ := ipam.NewNodeSubnets(ipam.NewMemoryStore(), netip.MustParsePrefix("10.200.0.0/16"), 24)
	for _, node := range []string{"node0", "node1", "node0"} {
		p, _ := subnets.Assign(ctx, node)
		fmt.Println(node, p)
	}
	// Output:
	// node0 10.200.0.0/24
	// node1 10.200.1.0/24
	// node0 10.200.0.0/24
}

func ExampleGC() {
	ctx := context.Background()
	store := ipam.NewMemoryStore()
	alloc, _ := ipam.NewAllocator(store, ipam.RangeSet{{Subnet: netip.MustParsePrefix("10.1.0.0/24")}})
	alloc.Allocate(ctx, ipam.Owner{ContainerID: "a", IfName: "eth0"})
	alloc.Allocate(ctx, ipam.Owner{ContainerID: "b", IfName: "eth0"})

	gone, _ := ipam.GC(ctx, store, []ipam.Owner{{ContainerID: "a", IfName: "eth0"}})
	fmt.Println(gone)
	// Output:
	// [{10.1.0.3 b/eth0}]
}
