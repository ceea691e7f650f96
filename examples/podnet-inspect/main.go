// Command podnet-inspect walks one pod's network path the way one would by
// hand with ip, ethtool, brctl, iptables-save and conntrack, and prints
// what it finds:
//
//   - the pod's network namespace: inode, names, the processes in it
//     (lsns -t net, ip netns identify, ls -l /proc/*/ns/net);
//   - its interfaces and addresses (ip addr);
//   - eth0's peer ifindex → the host-side veth → its bridge and the
//     bridge's other ports (ethtool -S eth0, ip link, brctl show);
//   - the pod's routes and the node's route back to it (ip route,
//     ip route get);
//   - the node's iptables rules that mention the pod's address or subnet
//     (iptables-save: masquerade, Service DNAT endpoints);
//   - the elements of the service proxy's nftables tables that name the
//     pod's address: the Service ports leading to it (nft list table ip
//     podnet-proxy), so the Service path shows under either backend;
//   - the node's conntrack flows with the pod's address, with their
//     translations (conntrack -L).
//
// Usage:
//
//	podnet-inspect [--json] [--node PATH] POD
//
// POD is a namespace name under /var/run/netns, a path to a namespace, or
// the PID of a process inside it. The node is the namespace that holds the
// pod's bridge: the current one unless --node says otherwise. It works on
// any veth-attached pod, whichever plugin made it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/podnet/podnet/netns"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("podnet-inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	nodePath := fs.String("node", "", "path of the node's network namespace (default: the current one)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: podnet-inspect [--json] [--node PATH] POD\n\nPOD is a netns name, a netns path, or a PID inside the pod.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	pod, err := openPod(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "podnet-inspect:", err)
		return 1
	}
	defer pod.Close()
	var node *netns.NS
	if *nodePath != "" {
		node, err = netns.Open(*nodePath)
	} else {
		node, err = netns.Current()
	}
	if err != nil {
		fmt.Fprintln(stderr, "podnet-inspect: node:", err)
		return 1
	}
	defer node.Close()

	rep, err := inspect(context.Background(), pod, node)
	if err != nil {
		fmt.Fprintln(stderr, "podnet-inspect:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "podnet-inspect:", err)
			return 1
		}
		return 0
	}
	printText(stdout, rep)
	return 0
}

// openPod resolves a PID, a path or a name to the pod's namespace, with a
// message that says which was meant when it fails.
func openPod(arg string) (*netns.NS, error) {
	if pid, err := strconv.Atoi(arg); err == nil {
		ns, err := netns.OpenPID(pid)
		if errors.Is(err, netns.ErrNotFound) {
			return nil, fmt.Errorf("no process with PID %d", pid)
		}
		return ns, err
	}
	if strings.Contains(arg, "/") {
		ns, err := netns.Open(arg)
		if errors.Is(err, netns.ErrNotFound) {
			return nil, fmt.Errorf("no namespace at %s", arg)
		}
		return ns, err
	}
	ns, err := netns.OpenName(arg)
	if errors.Is(err, netns.ErrNotFound) {
		return nil, fmt.Errorf("no namespace named %q in %s (see ip netns list)", arg, netns.RunDir)
	}
	return ns, err
}

// printText prints r as sections, each headed by the command that shows
// the same on a node.
func printText(w io.Writer, r *Report) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	printNamespace(p, r.Pod)
	printInterfaces(p, r.Interfaces)
	if r.Veth != nil {
		printVeth(p, r.Veth)
	}
	printRoutes(p, r)
	printNodeRules(p, r)
	for _, w := range r.Warnings {
		p("\nwarning: %s", w)
	}
}

// lineFunc prints one line, formatted as by fmt.Printf.
type lineFunc func(format string, args ...any)

func printNamespace(p lineFunc, ns Namespace) {
	p("# namespace (lsns -t net, ip netns identify)")
	names := strings.Join(ns.Names, ", ")
	if names == "" {
		names = "(unnamed)"
	}
	p("%d %s  %s", ns.Inode, names, ns.Path)
	for _, pr := range ns.Processes {
		p("  pid %d %s", pr.PID, pr.Command)
	}
	if len(ns.Processes) == 0 {
		p("  no process inside")
	}
}

func printInterfaces(p lineFunc, ifcs []Interface) {
	p("\n# interfaces (ip addr)")
	for _, i := range ifcs {
		name := i.Name
		if i.PeerIndex != 0 {
			name = fmt.Sprintf("%s@if%d", i.Name, i.PeerIndex)
		}
		state := "DOWN"
		if i.Up {
			state = "UP"
		}
		p("%d: %s %s mtu %d %s %v", i.Index, name, i.Type, i.MTU, state, i.Addresses)
	}
}

// printVeth prints the veth pair and, when the node end has one, its
// bridge with every port.
func printVeth(p lineFunc, v *VethPath) {
	p("\n# the veth pair (ethtool -S %s → ip link | grep '^%d:')", v.PodInterface, v.PeerIndex)
	p("%s: peer_ifindex %d", v.PodInterface, v.PeerIndex)
	if v.HostVeth != "" {
		master := "no bridge"
		if v.Bridge != "" {
			master = "master " + v.Bridge
		}
		p("node %d: %s %s", v.HostIndex, v.HostVeth, master)
	}
	if v.Bridge == "" {
		return
	}
	p("\n# the bridge (brctl show %s)", v.Bridge)
	p("%s (ifindex %d) %v", v.Bridge, v.BridgeIndex, v.BridgeAddrs)
	for _, port := range v.Ports {
		mark := ""
		if port.ThisPod {
			mark = "  ← this pod"
		}
		p("  %d %s hairpin=%v%s", port.Index, port.Name, port.Hairpin, mark)
	}
}

func printRoutes(p lineFunc, r *Report) {
	p("\n# routes in the pod (ip route)")
	for _, rt := range r.PodRoutes {
		p("%s", rt)
	}
	p("\n# the node's route back to the pod (ip route get)")
	for _, nr := range r.NodeRoutes {
		p("%s: %s", nr.To, nr.Route)
	}
}

// printNodeRules prints the node's iptables rules, nftables elements and
// conntrack flows for the pod, "none" for a section without any.
func printNodeRules(p lineFunc, r *Report) {
	p("\n# iptables rules of the node naming the pod or its subnet (iptables-save)")
	if len(r.NATRules) == 0 {
		p("none")
	}
	for _, nr := range r.NATRules {
		p("-t %s %s", nr.Table, nr.Rule)
	}
	p("\n# nftables Service elements of the node naming the pod (nft list table ip podnet-proxy)")
	if len(r.ServiceElements) == 0 {
		p("none")
	}
	for _, e := range r.ServiceElements {
		p("%s: %s", e.Table, e.Element)
	}
	p("\n# conntrack flows of the pod (conntrack -L)")
	if len(r.Conntrack) == 0 {
		p("none")
	}
	for _, f := range r.Conntrack {
		p("%s", f)
	}
}
