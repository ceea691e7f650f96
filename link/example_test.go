package link_test

import (
	"fmt"
	"log"

	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
)

// Bring a fresh pod namespace's loopback up, as the CNI loopback plugin
// does, and list its interfaces like `ip -d link show`.
func Example() {
	pod, err := netns.New()
	if err != nil {
		log.Fatal(err)
	}
	defer pod.Close()
	if err := link.SetUp(pod, "lo"); err != nil {
		log.Fatal(err)
	}
	infos, err := link.List(pod)
	if err != nil {
		log.Fatal(err)
	}
	for _, l := range infos {
		fmt.Println(l.Index, l.Name, l.Type, l.Up)
	}
}
