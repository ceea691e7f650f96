package conntrack_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/netns"
)

// Show the NAT translations of UDP flows to a service address, as
// conntrack -L would.
func ExampleList() {
	node, err := netns.OpenName("node0")
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	vip := netip.MustParseAddr("10.96.0.10")
	flows, err := conntrack.List(context.Background(), node, conntrack.Filter{Protocol: conntrack.UDP, OrigDst: vip}.Match)
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range flows {
		fmt.Println(f)
	}
}

// Delete the UDP flows answered by two removed backends, with one dump of
// the table.
func ExampleDelete() {
	node, err := netns.OpenName("node0")
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	stale := conntrack.Any(
		conntrack.Filter{Protocol: conntrack.UDP, ReplySrc: netip.MustParseAddr("10.200.1.5")},
		conntrack.Filter{Protocol: conntrack.UDP, ReplySrc: netip.MustParseAddr("10.200.2.7")},
	)
	n, err := conntrack.Delete(context.Background(), node, stale)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("deleted", n)
}
