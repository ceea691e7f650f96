package route_test

import (
	"fmt"
	"log"
	"net/netip"

	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/route"
)

// Route every other node's pod CIDR to that node (host-gw), owning exactly
// these routes: routes of departed nodes are removed, nobody else's touched.
func ExampleSync() {
	node, err := netns.OpenName("worker-0")
	if err != nil {
		log.Fatal(err)
	}
	res, err := route.Sync(node, route.ProtocolPodnet, []route.Route{
		{Dst: netip.MustParsePrefix("10.200.1.0/24"), Gateway: netip.MustParseAddr("10.240.0.21")},
		{Dst: netip.MustParsePrefix("10.200.2.0/24"), Gateway: netip.MustParseAddr("10.240.0.22")},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("added", res.Added, "removed", res.Removed)
}

// A pod's default route towards its bridge.
func ExampleEnsureDefault() {
	pod, _ := netns.OpenName("cni-912bcc63")
	if err := route.EnsureDefault(pod, netip.MustParseAddr("10.200.0.1"), "eth0"); err != nil {
		log.Fatal(err)
	}
}

func ExampleRoute_String() {
	r := route.Route{Dst: netip.MustParsePrefix("10.200.1.0/24"), Gateway: netip.MustParseAddr("10.240.0.21")}
	fmt.Println(r)
	// Output: 10.200.1.0/24 via 10.240.0.21
}
