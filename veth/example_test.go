package veth_test

import (
	"fmt"
	"log"

	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/veth"
)

// Give a pod an eth0 whose other end is in the node namespace.
func ExampleCreate() {
	node, _ := netns.OpenName("node0")
	pod, _ := netns.OpenName("cni-912bcc63")
	p, err := veth.Create(node, veth.Spec{PeerName: "eth0", PeerNS: pod, MTU: 1500})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s@if%d in the node, eth0@if%d in the pod\n", p.Name, p.PeerIndex, p.Index)
}

// Follow a pod's eth0 to the host-side veth, like `ethtool -S eth0` and
// `ip link | grep '^7:'`.
func ExamplePeer() {
	node, _ := netns.OpenName("node0")
	pod, _ := netns.OpenName("cni-912bcc63")
	host, err := veth.Peer(pod, "eth0", node)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d: %s master %d\n", host.Index, host.Name, host.Master)
}
