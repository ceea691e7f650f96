package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/service"
	"github.com/podnet/podnet/veth"
)

// Report is the walk of one pod's network path, what --json prints.
type Report struct {
	Pod        Namespace   `json:"pod"`
	Interfaces []Interface `json:"interfaces"`
	Veth       *VethPath   `json:"veth,omitempty"`
	PodRoutes  []string    `json:"podRoutes"`
	NodeRoutes []NodeRoute `json:"nodeRoutes"`
	NATRules   []NATRule   `json:"natRules"`
	// ServiceElements are the elements of the service proxy's nftables
	// tables (podnet-proxy, kube-proxy) naming the pod's addresses: the
	// Service ports that lead to it, its hairpin entry.
	ServiceElements []ServiceElement `json:"serviceElements"`
	Conntrack       []string         `json:"conntrack"`
	Warnings        []string         `json:"warnings,omitempty"`
	Addresses       []netip.Addr     `json:"addresses"`
}

// Namespace identifies the pod's network namespace.
type Namespace struct {
	Path      string    `json:"path"`
	Inode     uint64    `json:"inode"`
	Names     []string  `json:"names,omitempty"` // under /var/run/netns
	Processes []Process `json:"processes"`
}

// Process is one process inside the namespace.
type Process struct {
	PID     int    `json:"pid"`
	Command string `json:"command"`
}

// Interface is one link inside the pod.
type Interface struct {
	Name      string         `json:"name"`
	Index     int            `json:"index"`
	Type      string         `json:"type"`
	MAC       string         `json:"mac,omitempty"`
	MTU       int            `json:"mtu"`
	Up        bool           `json:"up"`
	PeerIndex int            `json:"peerIndex,omitempty"`
	Addresses []netip.Prefix `json:"addresses"`
}

// VethPath follows the pod's veth to the node and its bridge.
type VethPath struct {
	PodInterface string       `json:"podInterface"`
	PeerIndex    int          `json:"peerIndex"` // ethtool -S: peer_ifindex
	HostVeth     string       `json:"hostVeth"`
	HostIndex    int          `json:"hostIndex"`
	Bridge       string       `json:"bridge,omitempty"`
	BridgeIndex  int          `json:"bridgeIndex,omitempty"`
	BridgeAddrs  []string     `json:"bridgeAddresses,omitempty"`
	Ports        []BridgePort `json:"ports,omitempty"`
}

// BridgePort is one port of the pod's bridge.
type BridgePort struct {
	Name    string `json:"name"`
	Index   int    `json:"index"`
	Hairpin bool   `json:"hairpin"`
	ThisPod bool   `json:"thisPod,omitempty"`
}

// NodeRoute is the route the node uses towards one of the pod's addresses.
type NodeRoute struct {
	To    netip.Addr `json:"to"`
	Route string     `json:"route"`
}

// NATRule is an iptables rule of the node that mentions the pod.
type NATRule struct {
	Table string `json:"table"`
	Chain string `json:"chain"`
	Rule  string `json:"rule"`
}

// errNoVeth: the namespace is not a pod attached by a veth.
var errNoVeth = errors.New("has no veth interface: is it a pod's namespace?")

// inspect walks pod's network path: its namespace and interfaces, the veth
// to node and its bridge, the routes both ways, and node's rules and flows
// for the pod. What cannot be read on node is a warning, not an error.
func inspect(ctx context.Context, pod, node *netns.NS) (*Report, error) {
	ns, err := describeNamespace(pod)
	if err != nil {
		return nil, err
	}
	r := &Report{Pod: ns}
	links, err := link.List(pod)
	if err != nil {
		return nil, err
	}
	var vethName string
	r.Interfaces, r.Addresses, vethName = describeInterfaces(pod, links)
	if vethName == "" {
		return nil, fmt.Errorf("netns %q %w", pod, errNoVeth)
	}

	r.Veth, err = followVeth(pod, node, vethName)
	if err != nil {
		r.Warnings = append(r.Warnings, err.Error())
	}
	r.addRoutes(pod, node)
	r.addNodeRules(ctx, node, podSubnets(links, pod))
	return r, nil
}

// describeNamespace identifies pod: its path, inode, names under
// /var/run/netns and the processes inside. Names and processes that cannot
// be read are left out.
func describeNamespace(pod *netns.NS) (Namespace, error) {
	ns := Namespace{Path: pod.Path()}
	ino, err := pod.Inode()
	if err != nil {
		return Namespace{}, err
	}
	ns.Inode = ino
	if entries, err := netns.List(); err == nil {
		for _, e := range entries {
			if e.Inode == ino {
				ns.Names = append(ns.Names, e.Name)
			}
		}
	}
	if pids, err := pod.PIDs(); err == nil {
		for _, pid := range pids {
			comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
			ns.Processes = append(ns.Processes, Process{PID: pid, Command: strings.TrimSpace(string(comm))})
		}
	}
	return ns, nil
}

// describeInterfaces describes the pod's links and returns them, the pod's
// addresses (not loopback, not link-local), and the veth that leads to the
// node: eth0 if it is one, else the first, else "".
func describeInterfaces(pod *netns.NS, links []link.Info) (ifcs []Interface, addrs []netip.Addr, vethName string) {
	for _, l := range links {
		ifc := Interface{Name: l.Name, Index: l.Index, Type: l.Type, MTU: l.MTU, Up: l.Up}
		if l.MAC != nil {
			ifc.MAC = l.MAC.String()
		}
		if l.Type == "veth" {
			ifc.PeerIndex = l.Peer
			if vethName == "" || l.Name == "eth0" {
				vethName = l.Name
			}
		}
		ifc.Addresses, _ = addr.List(pod, l.Name)
		for _, a := range ifc.Addresses {
			if l.Type != "loopback" && !a.Addr().IsLinkLocalUnicast() {
				addrs = append(addrs, a.Addr())
			}
		}
		ifcs = append(ifcs, ifc)
	}
	return ifcs, addrs, vethName
}

// addRoutes adds the pod's routes and the node's route to each of the
// pod's addresses, warning for an address the node cannot reach.
func (r *Report) addRoutes(pod, node *netns.NS) {
	if rs, err := route.List(pod, route.Filter{}); err == nil {
		for _, rt := range rs {
			r.PodRoutes = append(r.PodRoutes, rt.String())
		}
	}
	for _, a := range r.Addresses {
		if rt, err := route.Get(node, a); err == nil {
			r.NodeRoutes = append(r.NodeRoutes, NodeRoute{To: a, Route: rt.String()})
		} else {
			r.Warnings = append(r.Warnings, fmt.Sprintf("node has no route to %s: %v", a, err))
		}
	}
}

// addNodeRules adds what the node holds about the pod's addresses and
// subnets: iptables rules, service proxy elements and conntrack flows,
// warning for each that cannot be read.
func (r *Report) addNodeRules(ctx context.Context, node *netns.NS, subnets []netip.Prefix) {
	var err error
	r.NATRules, err = natRules(ctx, node, r.Addresses, subnets)
	if err != nil {
		r.Warnings = append(r.Warnings, "read iptables: "+err.Error())
	}
	r.ServiceElements, err = serviceElements(node, r.Addresses)
	if err != nil {
		r.Warnings = append(r.Warnings, "read nftables: "+err.Error())
	}
	flows, err := conntrack.List(ctx, node, conntrack.Filter{}.Match)
	if err != nil {
		r.Warnings = append(r.Warnings, "read conntrack: "+err.Error())
	}
	for _, f := range flows {
		for _, a := range r.Addresses {
			if f.Orig.Src == a || f.Orig.Dst == a || f.Reply.Src == a || f.Reply.Dst == a {
				r.Conntrack = append(r.Conntrack, f.String())
				break
			}
		}
	}
}

// followVeth resolves the pod's veth to its node end and that end's bridge.
func followVeth(pod, node *netns.NS, name string) (*VethPath, error) {
	end, err := veth.Get(pod, name)
	if err != nil {
		return nil, err
	}
	v := &VethPath{PodInterface: name, PeerIndex: end.PeerIndex}
	host, err := veth.Peer(pod, name, node)
	if err != nil {
		return v, fmt.Errorf("peer of %s is not in the node namespace %s (use --node): %w", name, node, err)
	}
	v.HostVeth, v.HostIndex = host.Name, host.Index
	if host.Master == 0 {
		return v, nil
	}
	links, err := link.List(node)
	if err != nil {
		return v, err
	}
	for _, l := range links {
		if l.Index == host.Master {
			v.Bridge, v.BridgeIndex = l.Name, l.Index
		}
	}
	if v.Bridge == "" {
		return v, nil
	}
	if as, err := bridge.Addrs(node, v.Bridge); err == nil {
		for _, a := range as {
			if !a.Addr().IsLinkLocalUnicast() {
				v.BridgeAddrs = append(v.BridgeAddrs, a.String())
			}
		}
	}
	ports, err := bridge.Ports(node, v.Bridge)
	if err != nil {
		return v, err
	}
	for _, p := range ports {
		v.Ports = append(v.Ports, BridgePort{Name: p.Name, Index: p.Index, Hairpin: p.Hairpin, ThisPod: p.Index == host.Index})
	}
	return v, nil
}

// podSubnets are the connected subnets of the pod's addresses.
func podSubnets(links []link.Info, pod *netns.NS) []netip.Prefix {
	var out []netip.Prefix
	for _, l := range links {
		if l.Type == "loopback" {
			continue
		}
		as, _ := addr.List(pod, l.Name)
		for _, a := range as {
			if !a.Addr().IsLinkLocalUnicast() {
				out = append(out, a.Masked())
			}
		}
	}
	return out
}

// ServiceElement is one element of a service proxy's nftables table.
type ServiceElement struct {
	Table   string `json:"table"` // e.g. "ip podnet-proxy"
	Element string `json:"element"`
}

// serviceElements returns the elements of the proxy tables of both chain
// prefixes (podnet's and kube-proxy's names) in which one of addrs is a
// field of the key or the value.
func serviceElements(node *netns.NS, addrs []netip.Addr) ([]ServiceElement, error) {
	var out []ServiceElement
	for _, prefix := range []string{service.DefaultChainPrefix, service.KubeChainPrefix} {
		ch, err := service.NewChains(prefix)
		if err != nil {
			return out, err
		}
		es, err := service.NftElements(node, prefix)
		if err != nil {
			return out, err
		}
		for _, e := range es {
			fields := strings.Fields(e.Key + " " + e.Value)
			for _, a := range addrs {
				if slices.Contains(fields, a.String()) {
					fam := "ip"
					if e.Family == iptables.IPv6 {
						fam = "ip6"
					}
					out = append(out, ServiceElement{Table: fam + " " + ch.TableName(), Element: e.String()})
					break
				}
			}
		}
	}
	return out, nil
}

// natRules returns the node's rules in every table that name one of the
// pod's addresses (as a source, destination or DNAT target) or its subnet.
func natRules(ctx context.Context, node *netns.NS, addrs []netip.Addr, subnets []netip.Prefix) ([]NATRule, error) {
	k := iptables.NewKernel(node)
	var needles []string
	for _, a := range addrs {
		bits := a.BitLen()
		needles = append(needles, netip.PrefixFrom(a, bits).String()+" ", a.String()+":", "--to-destination "+a.String()+" ")
	}
	for _, s := range subnets {
		needles = append(needles, s.String()+" ", s.String()+"\n")
	}
	var out []NATRule
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		rs, err := k.SaveAll(ctx, f)
		if err != nil {
			return out, err
		}
		for _, t := range rs.Tables {
			for _, c := range t.Chains {
				for _, rule := range c.Rules {
					text := rule + " "
					for _, n := range needles {
						if strings.Contains(text, n) || strings.Contains(text+"\n", n) {
							out = append(out, NATRule{Table: string(t.Name), Chain: c.Name, Rule: "-A " + c.Name + " " + rule})
							break
						}
					}
				}
			}
		}
	}
	return out, nil
}
