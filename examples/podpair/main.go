// Command podpair builds the smallest piece of a Kubernetes node by hand
// with the podnet SDK: a node namespace with the cnio0 bridge and gateway
// 10.200.0.1/24, two pod namespaces joined to it by veth pairs, pings
// across it, prints what it built, and removes it all.
//
// It never touches the namespace it is started in. Leftovers of a killed
// run (namespaces named podpair-*) are removed on the next start.
//
//	sudo go run ./examples/podpair [-keep]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

const prefix = "podpair-"

var (
	gateway = netip.MustParsePrefix("10.200.0.1/24")
	podIPs  = []netip.Prefix{netip.MustParsePrefix("10.200.0.2/24"), netip.MustParsePrefix("10.200.0.3/24")}
)

func main() {
	keep := flag.Bool("keep", false, "leave the namespaces in place for exploration")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "podpair:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, keep bool) (err error) {
	if n := cleanup(); n > 0 {
		fmt.Printf("removed %d namespaces left by an earlier run\n", n)
	}
	if !keep {
		defer cleanup()
	}
	start := time.Now()

	node, err := newNode()
	if err != nil {
		return err
	}
	defer node.Close()
	pods, err := addPods(ctx, node)
	defer closeAll(pods)
	if err != nil {
		return err
	}
	fmt.Printf("built 1 node and %d pods in %v\n\n", len(pods), time.Since(start).Round(time.Millisecond))

	if err := describe(node, pods); err != nil {
		return err
	}
	failed := pingAcross(pods)

	if keep {
		fmt.Printf("\nleft running; explore with: sudo ip netns exec %spod0 ip addr\n", prefix)
		fmt.Printf("remove with: sudo ip netns del %snode; sudo ip netns del %spod0; sudo ip netns del %spod1\n", prefix, prefix, prefix)
	} else {
		fmt.Println("\nremoving namespaces (their veths and the bridge go with them)")
	}
	if failed > 0 {
		return fmt.Errorf("%d checks failed", failed)
	}
	return nil
}

// newNode makes the node namespace with the cnio0 bridge holding the
// gateway address, forwarding IPv4.
func newNode() (*netns.NS, error) {
	node, err := netns.NewNamed(prefix + "node")
	if err != nil {
		return nil, err
	}
	if _, err := bridge.Ensure(node, bridge.Spec{Name: "cnio0"}); err != nil {
		node.Close()
		return nil, err
	}
	if err := bridge.EnsureAddr(node, "cnio0", gateway, bridge.AddrOptions{}); err != nil {
		node.Close()
		return nil, err
	}
	if err := route.SetForwarding(node, route.IPv4, true); err != nil {
		node.Close()
		return nil, err
	}
	return node, nil
}

// addPods makes a pod namespace per address of podIPs, joined to node's
// cnio0 by a veth (hairpin on) with a default route via the gateway. It
// returns the pods made, for the caller to close, even on error.
func addPods(ctx context.Context, node *netns.NS) ([]*netns.NS, error) {
	var pods []*netns.NS
	for i, ip := range podIPs {
		if ctx.Err() != nil {
			return pods, ctx.Err()
		}
		pod, err := netns.NewNamed(fmt.Sprintf("%spod%d", prefix, i))
		if err != nil {
			return pods, err
		}
		pods = append(pods, pod)
		if err := link.SetUp(pod, "lo"); err != nil {
			return pods, err
		}
		p, err := veth.Create(node, veth.Spec{PeerName: "eth0", PeerNS: pod})
		if err != nil {
			return pods, err
		}
		if err := bridge.Attach(node, "cnio0", p.Name, bridge.PortOptions{Hairpin: true}); err != nil {
			return pods, err
		}
		if err := addr.Ensure(pod, "eth0", ip); err != nil {
			return pods, err
		}
		if err := route.EnsureDefault(pod, gateway.Addr(), "eth0"); err != nil {
			return pods, err
		}
	}
	return pods, nil
}

// closeAll closes the namespace handles; the namespaces stay while named.
func closeAll(nss []*netns.NS) {
	for _, ns := range nss {
		ns.Close()
	}
}

// pingAcross pings pod to pod both ways and pod0 to the gateway, prints a
// PASS or FAIL line for each, and returns how many failed.
func pingAcross(pods []*netns.NS) (failed int) {
	fmt.Println("\n# traffic")
	check := func(from int, dst netip.Addr) {
		rtt, err := probe.Ping(pods[from], dst, 3*time.Second)
		if err != nil {
			failed++
			fmt.Printf("FAIL pod%d (%s) → %s: %v\n", from, podIPs[from].Addr(), dst, err)
			return
		}
		fmt.Printf("PASS pod%d (%s) → %s: echo reply in %v\n", from, podIPs[from].Addr(), dst, rtt.Round(time.Microsecond))
	}
	check(0, podIPs[1].Addr())
	check(1, podIPs[0].Addr())
	check(0, gateway.Addr())
	return failed
}

// describe prints what ip netns, ethtool, brctl and ip route would show of
// what it built.
func describe(node *netns.NS, pods []*netns.NS) error {
	fmt.Println("# ip netns list (inode, name)")
	entries, err := netns.List()
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name, prefix) {
			fmt.Printf("%d %s\n", e.Inode, e.Name)
		}
	}
	fmt.Println("\n# each pod's eth0 and its peer in the node (ethtool -S eth0: peer_ifindex)")
	for _, pod := range pods {
		end, err := veth.Get(pod, "eth0")
		if err != nil {
			return err
		}
		host, err := veth.Peer(pod, "eth0", node)
		if err != nil {
			return err
		}
		ips, err := addr.List(pod, "eth0")
		if err != nil {
			return err
		}
		fmt.Printf("%s: eth0@if%d %v mac %s  →  node %d: %s@if%d master cnio0\n",
			pod.Name(), end.PeerIndex, v4(ips), end.MAC, host.Index, host.Name, host.PeerIndex)
	}
	fmt.Println("\n# brctl show cnio0")
	br, err := bridge.Get(node, "cnio0")
	if err != nil {
		return err
	}
	ports, err := bridge.Ports(node, "cnio0")
	if err != nil {
		return err
	}
	names := make([]string, len(ports))
	for i, p := range ports {
		names[i] = p.Name
	}
	fmt.Printf("cnio0 (ifindex %d, mac %s): %s\n", br.Index, br.MAC, strings.Join(names, " "))
	fmt.Println("\n# ip route show, inside pod0 and in the node")
	for _, ns := range []*netns.NS{pods[0], node} {
		rs, err := route.List(ns, route.Filter{Family: route.IPv4})
		if err != nil {
			return err
		}
		for _, r := range rs {
			fmt.Printf("%-14s %s\n", nameOf(ns), r)
		}
	}
	return nil
}

func nameOf(ns *netns.NS) string { return strings.TrimPrefix(ns.Name(), prefix) }

func v4(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() {
			out = append(out, p)
		}
	}
	return out
}

// cleanup removes every namespace named with our prefix; it returns how
// many there were.
func cleanup() int {
	entries, err := netns.List()
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name, prefix) {
			if err := netns.DeleteNamed(e.Name); err != nil && !errors.Is(err, netns.ErrNotFound) {
				fmt.Fprintln(os.Stderr, "podpair:", err)
			}
			n++
		}
	}
	return n
}
