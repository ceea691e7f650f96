package service_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"strings"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/service"
)

// Render a NodePort Service into a fake backend and show the dispatch
// rules; the same code with service.IPTables(iptables.NewKernel(ns)), or
// service.Nftables(ns), programs a namespace.
func Example() {
	fake := iptables.NewFake()
	p, err := service.New(service.Config{Backend: service.IPTables(fake), NodeName: "node0", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/16")}})
	if err != nil {
		log.Fatal(err)
	}
	err = p.Update(service.Service{
		Name:       service.Name{Namespace: "default", Name: "nginx"},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.30")},
		Ports:      []service.Port{{Protocol: service.TCP, Port: 80, NodePort: 31088}},
		Endpoints:  []service.Endpoint{{Addr: netip.MustParseAddr("10.200.1.2"), Ready: true, NodeName: "node1"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	res, err := p.Sync(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("full:", res.Full, res.Reason)
	for _, l := range strings.Split(fake.Dump(podnet.IPv4), "\n") {
		if strings.HasPrefix(l, "-A PODNET-SERVICES") || strings.HasPrefix(l, "-A PODNET-NODEPORTS") || strings.Contains(l, "DNAT") {
			fmt.Println(l)
		}
	}
	// Output:
	// full: true start
	// -A PODNET-NODEPORTS -p tcp -m comment --comment "default/nginx:" -m tcp --dport 31088 -j PODNET-EXT-4N57TFCL4MD7ZTDA
	// -A PODNET-SEP-FYHXJY6ICPOY2K7K -p tcp -m comment --comment "default/nginx:" -j DNAT --to-destination 10.200.1.2:80
	// -A PODNET-SERVICES -d 10.96.0.30/32 -p tcp -m comment --comment "default/nginx: cluster IP" -m tcp --dport 80 -j PODNET-SVC-4N57TFCL4MD7ZTDA
	// -A PODNET-SERVICES ! -d 127.0.0.0/8 -m comment --comment "podnet service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j PODNET-NODEPORTS
}

// Keep a node namespace's Service rules in sync: a full sync first, then
// partial ones as Services change.
func ExampleProxy_Sync() {
	node, err := netns.OpenName("node0")
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	p, err := service.New(service.Config{Backend: service.IPTables(iptables.NewKernel(node)), NodeName: "node0", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.200.0.0/16")}})
	if err != nil {
		log.Fatal(err)
	}
	dns := service.Service{
		Name:       service.Name{Namespace: "kube-system", Name: "kube-dns"},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:      []service.Port{{Name: "dns", Protocol: service.UDP, Port: 53}},
		Endpoints:  []service.Endpoint{{Addr: netip.MustParseAddr("10.200.0.5"), Ready: true, NodeName: "node0"}},
	}
	if err := p.Update(dns); err != nil {
		log.Fatal(err)
	}
	if _, err := p.Sync(context.Background()); err != nil { // full
		log.Fatal(err)
	}
	dns.Endpoints = append(dns.Endpoints, service.Endpoint{Addr: netip.MustParseAddr("10.200.1.5"), Ready: true, NodeName: "node1"})
	p.Update(dns)
	res, err := p.Sync(context.Background()) // partial: kube-dns's chains only
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Full, res.Services)
}

func ExampleChains() {
	c, _ := service.NewChains(service.KubeChainPrefix)
	fmt.Println(c.Services())
	fmt.Println(c.Service(service.Name{Namespace: "kube-system", Name: "kube-dns"}, "dns-tcp", service.TCP))
	// Output:
	// KUBE-SERVICES
	// KUBE-SVC-ERIFXISQEP7F7OF4
}
