package addr_test

import (
	"log"
	"net/netip"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/netns"
)

// Give a pod its address, as a CNI plugin does after IPAM chose it.
func ExampleEnsure() {
	pod, err := netns.OpenName("cni-912bcc63")
	if err != nil {
		log.Fatal(err)
	}
	if err := addr.Ensure(pod, "eth0", netip.MustParsePrefix("10.200.0.4/24")); err != nil {
		log.Fatal(err)
	}
}
