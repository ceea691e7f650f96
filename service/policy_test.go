package service

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
)

// The traffic policy cases below follow kube-proxy v1.34.2, checked side
// by side on the same objects (../shared/DESIGN.md): only traffic from
// outside the cluster is bound by an external policy Local; an internal
// policy Local without a local endpoint drops; node ports are not served
// on loopback under nftables.

// refused reports whether asking dst from ns is refused at once (an ICMP
// reject or a TCP reset within a second), not left to time out.
func refused(ns *netns.NS, dst string) bool {
	start := time.Now()
	_, err := probe.Ask(ns, "tcp", netip.MustParseAddrPort(dst), 3*time.Second)
	return errors.Is(err, syscall.ECONNREFUSED) && time.Since(start) < time.Second
}

// dropped reports whether asking dst from ns gets no answer at all: no
// reply and no refusal within the wait.
func dropped(ns *netns.NS, dst string) bool {
	_, err := probe.Ask(ns, "tcp", netip.MustParseAddrPort(dst), 500*time.Millisecond)
	return err != nil && !errors.Is(err, syscall.ECONNREFUSED)
}

// testLocalShortCircuit: a Service with external policy Local whose only
// endpoint is on the other node. From outside, its node port and external
// IP are dropped; a pod on this node and the node itself reach the remote
// endpoint through both (the pod with its own address, the node
// masqueraded), as through a load balancer outside the cluster.
func testLocalShortCircuit(t *testing.T, c *cluster) {
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	must(t, route.Ensure(c.outside, route.Route{Dst: pfx("203.0.113.8/32"), Gateway: netip.MustParseAddr(node0Ext), Dev: "eth0"}))
	p := c.proxy()
	s := svc("remote", "10.96.0.42", TCP, 80, c.endpoints("pod1a"))
	s.Ports[0].NodePort = 31002
	s.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.8")}
	s.ExternalTrafficPolicy = PolicyLocal
	apply(t, p, s)
	for _, dst := range []string{node0Ext + ":31002", "203.0.113.8:80"} {
		if !dropped(c.outside, dst) {
			t.Errorf("outside → %s: answered or refused; want dropped (no local endpoint)", dst)
		}
		if r := ask(t, client.ns, "tcp", dst); r.Name != "pod1a" || r.Source.Addr() != client.addr {
			t.Errorf("pod → %s: %+v, want pod1a seeing the pod's address", dst, r)
		}
		if r := ask(t, c.node0, "tcp", dst); r.Name != "pod1a" || r.Source.Addr() != netip.MustParseAddr(node0IP) {
			t.Errorf("node → %s: %+v, want pod1a seeing the node's address", dst, r)
		}
	}
}

// testInternalLocal: an internal policy Local without a local endpoint
// drops traffic to the cluster IP; with one it serves it from this node
// only.
func testInternalLocal(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	remote := svc("remote", "10.96.0.43", TCP, 80, c.endpoints("pod1a"))
	remote.InternalTrafficPolicy = PolicyLocal
	both := svc("both", "10.96.0.44", TCP, 80, c.endpoints("pod0a", "pod1a"))
	both.InternalTrafficPolicy = PolicyLocal
	apply(t, p, remote, both)
	if !dropped(client.ns, "10.96.0.43:80") {
		t.Error("internal policy Local, endpoints elsewhere only: answered or refused; want dropped")
	}
	for range 10 {
		if r := ask(t, client.ns, "tcp", "10.96.0.44:80"); r.Name != "pod0a" {
			t.Fatalf("internal policy Local: answered by %q, want the local pod0a only", r.Name)
		}
	}
}

// testLocalhostNodePort: 127.0.0.1:NODEPORT from the node is refused at
// once, with endpoints, with endpoints on another node only under an
// external policy Local, and with none: node ports are not served on
// loopback (kube-proxy's nftables mode), so it never hangs.
func testLocalhostNodePort(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	p := c.proxy()
	served := svc("served", "10.96.0.45", TCP, 80, c.endpoints("pod0a"))
	served.Ports[0].NodePort = 31045
	remote := svc("remote", "10.96.0.46", TCP, 80, c.endpoints("pod1a"))
	remote.Ports[0].NodePort = 31046
	remote.ExternalTrafficPolicy = PolicyLocal
	empty := svc("empty", "10.96.0.47", TCP, 80, nil)
	empty.Ports[0].NodePort = 31047
	apply(t, p, served, remote, empty)
	for _, port := range []string{"31045", "31046", "31047"} {
		if !refused(c.node0, "127.0.0.1:"+port) {
			t.Errorf("127.0.0.1:%s from the node: not refused at once", port)
		}
	}
	// The node port still works on the node's own addresses.
	if r := ask(t, c.node0, "tcp", node0IP+":31045"); r.Name != "pod0a" {
		t.Errorf("node IP:31045: %+v", r)
	}
}

// testClusterIPOtherPort: a connection to a cluster IP on a port its
// Service does not have never leaves by the default route (where, in this
// test, the outside host answers for that address). nftables rejects it
// at once, from a pod and from the node, as kube-proxy's nftables mode;
// in iptables mode a rule per Service in the filter table would make
// every Service added or deleted cost ten times more at 10k Services, so
// it falls to the service CIDR's drop.
func testClusterIPOtherPort(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	client := c.addPod("client", 0, "10.200.0.9")
	impostor(t, c, "10.96.0.48")
	p := c.proxy(func(cfg *Config) { cfg.ServiceCIDRs = []netip.Prefix{pfx("10.96.0.0/16")} })
	apply(t, p, svc("web", "10.96.0.48", TCP, 80, c.endpoints("pod0a")))
	for name, from := range map[string]*netns.NS{"pod": client.ns, "node": c.node0} {
		switch c.mode {
		case ModeNftables:
			if !refused(from, "10.96.0.48:8080") {
				t.Errorf("%s → 10.96.0.48:8080 (no such Service port): not refused at once", name)
			}
		default:
			if !dropped(from, "10.96.0.48:8080") {
				t.Errorf("%s → 10.96.0.48:8080 (no such Service port): answered or refused; want dropped", name)
			}
		}
		if r := ask(t, from, "tcp", "10.96.0.48:80"); r.Name != "pod0a" {
			t.Errorf("%s → the Service port: %+v", name, r)
		}
	}
}

// testUnallocatedServiceIP: with the service CIDRs known, a connection to
// an address in them that no Service has is dropped, not sent out by the
// default route (where the outside host would answer it).
func testUnallocatedServiceIP(t *testing.T, c *cluster) {
	client := c.addPod("client", 0, "10.200.0.9")
	impostor(t, c, "10.96.0.49")
	p := c.proxy(func(cfg *Config) { cfg.ServiceCIDRs = []netip.Prefix{pfx("10.96.0.0/16")} })
	apply(t, p, svc("web", "10.96.0.20", TCP, 80, nil))
	for name, from := range map[string]*netns.NS{"pod": client.ns, "node": c.node0} {
		if !dropped(from, "10.96.0.49:8080") {
			t.Errorf("%s → 10.96.0.49:8080 (unallocated): answered or refused; want dropped", name)
		}
	}
}

// impostor makes the outside host, where node0's default route leads,
// answer on a as probe "impostor": whatever reaches it there was let out.
func impostor(t *testing.T, c *cluster, a string) {
	t.Helper()
	must(t, addr.Ensure(c.outside, "lo", pfx(a+"/32")))
	must(t, route.Ensure(c.outside, route.Route{Dst: pfx("10.200.0.0/16"), Gateway: netip.MustParseAddr(node0Ext), Dev: "eth0"}))
	srv, err := probe.Serve(c.outside, netip.MustParseAddrPort(a+":8080"), "impostor")
	must(t, err)
	t.Cleanup(func() { srv.Close() })
	// Without the proxy's rules the impostor answers: the test can fail.
	if r, err := probe.Ask(c.node0, "tcp", netip.MustParseAddrPort(a+":8080"), 2*time.Second); err != nil || r.Name != "impostor" {
		t.Fatalf("impostor on %s does not answer before the proxy runs: %+v %v", a, r, err)
	}
}

// testTopologyHints: with zone hints, new connections go to the endpoint
// hinted for the node's zone; SetZone moves them; a zone no endpoint is
// hinted for uses every endpoint.
func testTopologyHints(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy(func(cfg *Config) { cfg.Zone = "zone-a" })
	s := svc("near", "10.96.0.70", TCP, 80, c.endpoints("pod0a", "pod1a"))
	s.Endpoints[0].ZoneHints = []string{"zone-a"}
	s.Endpoints[1].ZoneHints = []string{"zone-b"}
	apply(t, p, s)
	seen := func() map[string]int {
		got := map[string]int{}
		for range 20 {
			got[ask(t, client.ns, "tcp", "10.96.0.70:80").Name]++
		}
		return got
	}
	if got := seen(); got["pod0a"] != 20 {
		t.Errorf("zone-a: %v, want pod0a only", got)
	}
	p.SetZone("zone-b")
	apply(t, p)
	if got := seen(); got["pod1a"] != 20 {
		t.Errorf("zone-b: %v, want pod1a only", got)
	}
	p.SetZone("zone-c")
	apply(t, p)
	if got := seen(); got["pod0a"] == 0 || got["pod1a"] == 0 {
		t.Errorf("zone-c (no endpoint hinted): %v, want both", got)
	}
}

// testLoadBalancer: a load-balancer IP reaches the endpoints from outside
// as an external IP does (masqueraded under the Cluster policy); with
// loadBalancerSourceRanges only their sources get through: the outside
// host named in them does, a pod and the node itself do not (dropped,
// as kube-proxy drops every other source).
func testLoadBalancer(t *testing.T, c *cluster) {
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	for _, lb := range []string{"203.0.113.20", "203.0.113.21"} {
		must(t, route.Ensure(c.outside, route.Route{Dst: pfx(lb + "/32"), Gateway: netip.MustParseAddr(node0Ext), Dev: "eth0"}))
	}
	p := c.proxy()
	open := svc("lb", "10.96.0.90", TCP, 80, c.endpoints("pod1a"))
	open.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.20")}
	ranged := svc("lb-ranged", "10.96.0.91", TCP, 80, c.endpoints("pod1a"))
	ranged.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.21")}
	ranged.LoadBalancerSourceRanges = []netip.Prefix{pfx(outsideIP + "/32"), pfx("198.51.100.0/24")}
	apply(t, p, open, ranged)
	if r := ask(t, c.outside, "tcp", "203.0.113.20:80"); r.Name != "pod1a" || r.Source.Addr() != netip.MustParseAddr(node0IP) {
		t.Errorf("outside → load-balancer IP: %+v, want pod1a seeing the node's address", r)
	}
	if r := ask(t, c.outside, "tcp", "203.0.113.21:80"); r.Name != "pod1a" {
		t.Errorf("outside, in the source ranges → load-balancer IP: %+v", r)
	}
	for name, from := range map[string]*netns.NS{"pod": client.ns, "node": c.node0} {
		if !dropped(from, "203.0.113.21:80") {
			t.Errorf("%s, outside the source ranges → load-balancer IP: answered or refused; want dropped", name)
		}
		if r := ask(t, from, "tcp", "203.0.113.20:80"); r.Name != "pod1a" {
			t.Errorf("%s → the unrestricted load-balancer IP: %+v", name, r)
		}
	}
}

// testLoadBalancerFromNode: load-balancer IPs held by the node as local
// addresses (a VIP-style load balancer). When a Service's source ranges
// contain the node's IP, the node reaches its IP, which it sends from
// (kube-proxy's allowFromNode); when they do not, the node is dropped as
// any other source. Nested and repeated ranges are one interval each.
func testLoadBalancerFromNode(t *testing.T, c *cluster) {
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	for _, vip := range []string{"203.0.113.22", "203.0.113.23"} {
		must(t, addr.Ensure(c.node0, "lo", pfx(vip+"/32")))
	}
	must(t, route.Ensure(c.outside, route.Route{Dst: pfx("203.0.113.22/32"), Gateway: netip.MustParseAddr(node0Ext), Dev: "eth0"}))
	p := c.proxy(func(cfg *Config) { cfg.NodeIPs = []netip.Addr{netip.MustParseAddr(node0IP)} })
	withNode := svc("lb-node", "10.96.0.94", TCP, 80, c.endpoints("pod1a"))
	withNode.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.22")}
	withNode.LoadBalancerSourceRanges = []netip.Prefix{pfx("10.240.0.0/24"), pfx(node0IP + "/32"), pfx(outsideIP + "/32"), pfx("192.168.50.0/24"), pfx("10.240.0.0/24")}
	without := svc("lb-other", "10.96.0.95", TCP, 80, c.endpoints("pod1a"))
	without.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.23")}
	without.LoadBalancerSourceRanges = []netip.Prefix{pfx(outsideIP + "/32")}
	apply(t, p, withNode, without)
	if r := ask(t, c.node0, "tcp", "203.0.113.22:80"); r.Name != "pod1a" {
		t.Errorf("node → its VIP, ranges with the node IP: %+v, want pod1a", r)
	}
	if r := ask(t, c.outside, "tcp", "203.0.113.22:80"); r.Name != "pod1a" {
		t.Errorf("outside, in nested ranges → VIP: %+v, want pod1a", r)
	}
	if !dropped(client.ns, "203.0.113.22:80") {
		t.Error("pod outside the ranges → VIP: answered or refused; want dropped")
	}
	if !dropped(c.node0, "203.0.113.23:80") {
		t.Error("node → its VIP, ranges without the node IP: answered or refused; want dropped")
	}
}

// testNodePortAddresses: with Config.NodePortAddresses (kube-proxy's
// --nodeport-addresses) node ports answer on those addresses only; the
// node's other addresses refuse them.
func testNodePortAddresses(t *testing.T, c *cluster) {
	c.addPod("pod1a", 1, "10.200.1.2")
	p := c.proxy(func(cfg *Config) { cfg.NodePortAddresses = []netip.Addr{netip.MustParseAddr(node0Ext)} })
	s := svc("np", "10.96.0.92", TCP, 80, c.endpoints("pod1a"))
	s.Ports[0].NodePort = 31092
	apply(t, p, s)
	if r := ask(t, c.outside, "tcp", node0Ext+":31092"); r.Name != "pod1a" {
		t.Errorf("listed address: %+v", r)
	}
	if !refused(c.node0, node0IP+":31092") {
		t.Errorf("unlisted address %s: not refused at once", node0IP)
	}
	if r := ask(t, c.node0, "tcp", "10.96.0.92:80"); r.Name != "pod1a" {
		t.Errorf("cluster IP: %+v", r)
	}
}

// TestIptablesForwardChain: in iptables mode the proxy keeps kube-proxy's
// KUBE-FORWARD: with the node's FORWARD policy DROP (a Docker host), node
// port traffic to a pod on another node and its replies still pass, and
// packets conntrack calls invalid are dropped unless the namespace's
// conntrack is TCP-liberal.
func TestIptablesForwardChain(t *testing.T) {
	c := newCluster(t, ModeIptables)
	c.addPod("pod1a", 1, "10.200.1.2")
	p := c.proxy()
	s := svc("np", "10.96.0.93", TCP, 80, c.endpoints("pod1a"))
	s.Ports[0].NodePort = 31093
	apply(t, p, s)
	if _, err := execns.Output(context.Background(), c.node0, nil, "iptables", "-w", "-P", "FORWARD", "DROP"); err != nil {
		t.Fatal(err)
	}
	if r := ask(t, c.outside, "tcp", node0Ext+":31093"); r.Name != "pod1a" {
		t.Errorf("node port through a FORWARD policy of DROP: %+v", r)
	}
	invalid := "-A PODNET-FORWARD -m conntrack --ctstate INVALID -j DROP"
	if rules := saveFilter(t, c); !strings.Contains(rules, invalid) {
		t.Errorf("no %q in\n%s", invalid, rules)
	}
	must(t, sysctl.Set(c.node0, "net.netfilter.nf_conntrack_tcp_be_liberal", "1"))
	p2 := c.proxy()
	apply(t, p2, s)
	if rules := saveFilter(t, c); strings.Contains(rules, invalid) {
		t.Errorf("TCP-liberal conntrack, yet %q in\n%s", invalid, rules)
	}
}

func saveFilter(t *testing.T, c *cluster) string {
	t.Helper()
	out, err := execns.Output(context.Background(), c.node0, nil, "iptables-save", "-t", "filter")
	must(t, err)
	return string(out)
}
