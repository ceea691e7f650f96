package bridge_test

import (
	"fmt"
	"log"
	"net/netip"

	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/netns"
)

// Set up a cnio0 bridge with the pod gateway address, attach a
// pod's host-side veth, and list the ports like `brctl show cnio0`.
func Example() {
	node, err := netns.OpenName("node0")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := bridge.Ensure(node, bridge.Spec{Name: "cnio0", MTU: 1500}); err != nil {
		log.Fatal(err)
	}
	gw := netip.MustParsePrefix("10.200.0.1/24")
	if err := bridge.EnsureAddr(node, "cnio0", gw, bridge.AddrOptions{}); err != nil {
		log.Fatal(err)
	}
	if err := bridge.Attach(node, "cnio0", "veth71f7d238", bridge.PortOptions{Hairpin: true}); err != nil {
		log.Fatal(err)
	}
	ports, err := bridge.Ports(node, "cnio0")
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range ports {
		fmt.Println(p.Index, p.Name, "hairpin", p.Hairpin)
	}
}
