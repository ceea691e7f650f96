package service

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
)

// TestBehaviour runs every behaviour case against both modes, with real
// traffic between namespaces.
func TestBehaviour(t *testing.T) {
	cases := []struct {
		name string
		run  func(*testing.T, *cluster)
	}{
		{"ClusterIP", testClusterIP},
		{"NodePortToOtherNode", testNodePortToOtherNode},
		{"SpreadAndAffinity", testSpreadAndAffinity},
		{"Hairpin", testHairpin},
		{"LocalPolicy", testLocalPolicy},
		{"NoEndpointsRejected", testNoEndpointsRejected},
		{"UDPEndpointRemoval", testUDPEndpointRemoval},
		{"UDPTargetPortChange", testUDPTargetPortChange},
		{"SyncKeepsConnections", testSyncKeepsConnections},
		{"Balance", testBalance},
		{"AffinityTimeout", testAffinityTimeout},
		{"IPv6", testIPv6},
		{"DualStack", testDualStack},
		{"SCTP", testSCTP},
		{"TerminatingFallback", testTerminatingFallback},
		{"ReadyTerminating", testReadyTerminating},
		{"ExternalIP", testExternalIP},
		{"LocalShortCircuit", testLocalShortCircuit},
		{"InternalLocal", testInternalLocal},
		{"LocalhostNodePort", testLocalhostNodePort},
		{"ClusterIPOtherPort", testClusterIPOtherPort},
		{"UnallocatedServiceIP", testUnallocatedServiceIP},
		{"TopologyHints", testTopologyHints},
		{"LoadBalancer", testLoadBalancer},
		{"LoadBalancerFromNode", testLoadBalancerFromNode},
		{"NodePortAddresses", testNodePortAddresses},
	}
	for _, m := range []Mode{ModeIptables, ModeNftables} {
		for _, tc := range cases {
			t.Run(string(m)+"/"+tc.name, func(t *testing.T) { tc.run(t, newCluster(t, m)) })
		}
	}
}

func svc(name, clusterIP string, proto Protocol, port uint16, eps []Endpoint) Service {
	return Service{
		Name:       Name{"default", name},
		ClusterIPs: []netip.Addr{netip.MustParseAddr(clusterIP)},
		Ports:      []Port{{Name: "p", Protocol: proto, Port: port, TargetPort: 8080}},
		Endpoints:  eps,
	}
}

// testClusterIP: TCP and UDP to a cluster IP from a pod reach an endpoint
// on either node with the pod's own address as source.
func testClusterIP(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	apply(t, p, svc("web", "10.96.0.20", TCP, 80, c.endpoints("pod1a")), svc("dns", "10.96.0.10", UDP, 53, c.endpoints("pod0a")))
	if r := ask(t, client.ns, "tcp", "10.96.0.20:80"); r.Name != "pod1a" || r.Source.Addr() != client.addr {
		t.Errorf("tcp: %+v", r)
	}
	if r := ask(t, client.ns, "udp", "10.96.0.10:53"); r.Name != "pod0a" || r.Source.Addr() != client.addr {
		t.Errorf("udp: %+v", r)
	}
	// The node itself is off the cluster network: masqueraded.
	if r := ask(t, c.node0, "tcp", "10.96.0.20:80"); r.Name != "pod1a" || r.Source.Addr() != netip.MustParseAddr(node0IP) {
		t.Errorf("from node: %+v", r)
	}
}

// testNodePortToOtherNode: the NodePort 31088 example — from outside the
// cluster, a NodePort on node0 reaches a pod on node1, masqueraded to
// node0's address so the reply returns through it.
func testNodePortToOtherNode(t *testing.T, c *cluster) {
	c.addPod("pod1a", 1, "10.200.1.2")
	p := c.proxy()
	s := svc("nginx", "10.96.0.30", TCP, 80, c.endpoints("pod1a"))
	s.Ports[0].NodePort = 31088
	apply(t, p, s)
	for _, dst := range []string{node0Ext + ":31088", node0IP + ":31088"} {
		r := ask(t, c.outside, "tcp", dst)
		if r.Name != "pod1a" || r.Source.Addr() != netip.MustParseAddr(node0IP) {
			t.Errorf("%s: %+v", dst, r)
		}
	}
}

// testSpreadAndAffinity: without affinity new connections reach every
// endpoint; with ClientIP affinity they all stick to one.
func testSpreadAndAffinity(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	c.addPod("pod1b", 1, "10.200.1.3")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	s := svc("web", "10.96.0.20", TCP, 80, c.endpoints("pod0a", "pod1a", "pod1b"))
	apply(t, p, s)
	seen := map[string]int{}
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < 3 && time.Now().Before(deadline) {
		seen[ask(t, client.ns, "tcp", "10.96.0.20:80").Name]++
	}
	if len(seen) != 3 {
		t.Fatalf("reached only %v", seen)
	}
	s.Affinity, s.AffinitySeconds = AffinityClientIP, 60
	apply(t, p, s)
	first := ask(t, client.ns, "tcp", "10.96.0.20:80").Name
	for range 20 {
		if r := ask(t, client.ns, "tcp", "10.96.0.20:80"); r.Name != first {
			t.Fatalf("affinity broken: %s then %s", first, r.Name)
		}
	}
	// The kernel holds the client with the Service's timeout.
	rules := c.ruleset(t)
	if c.mode == ModeNftables {
		for _, want := range []string{"timeout 1m", "elements = { 10.200.0.9 expires "} {
			if !strings.Contains(rules, want) {
				t.Errorf("no %q in\n%s", want, rules)
			}
		}
	} else {
		if !strings.Contains(rules, "--rcheck --seconds 60 --reap") {
			t.Errorf("no 60 s recent check in\n%s", rules)
		}
		out, err := execns.Output(context.Background(), c.node0, nil, "sh", "-c", "cat /proc/net/xt_recent/PODNET-SEP-*")
		if err != nil || !strings.Contains(string(out), "src=10.200.0.9 ") {
			t.Errorf("xt_recent: %s %v", out, err)
		}
	}
}

// testBalance: 300 new connections over three endpoints spread evenly:
// each endpoint takes between 60 and 140 (100 ± 5 standard deviations).
func testBalance(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	c.addPod("pod1b", 1, "10.200.1.3")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	apply(t, p, svc("web", "10.96.0.20", TCP, 80, c.endpoints("pod0a", "pod1a", "pod1b")))
	seen := map[string]int{}
	for range 300 {
		seen[ask(t, client.ns, "tcp", "10.96.0.20:80").Name]++
	}
	for _, n := range []string{"pod0a", "pod1a", "pod1b"} {
		if seen[n] < 60 || seen[n] > 140 {
			t.Errorf("uneven: %v", seen)
			break
		}
	}
}

// testHairpin: a pod reaching itself through its Service gets its own
// answer, masqueraded to the node's gateway address.
func testHairpin(t *testing.T, c *cluster) {
	self := c.addPod("pod0a", 0, "10.200.0.2")
	p := c.proxy()
	apply(t, p, svc("web", "10.96.0.20", TCP, 80, c.endpoints("pod0a")))
	if r := ask(t, self.ns, "tcp", "10.96.0.20:80"); r.Name != "pod0a" || r.Source.Addr() != netip.MustParseAddr("10.200.0.1") {
		t.Errorf("%+v", r)
	}
}

// testLocalPolicy: with externalTrafficPolicy Local, a NodePort from
// outside only reaches node0's endpoint and keeps the client's address; a
// Service whose endpoints are all on node1 drops it on node0.
func testLocalPolicy(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	p := c.proxy()
	s := svc("local", "10.96.0.40", TCP, 80, c.endpoints("pod0a", "pod1a"))
	s.Ports[0].NodePort = 31000
	s.ExternalTrafficPolicy = PolicyLocal
	remote := svc("remote", "10.96.0.41", TCP, 80, c.endpoints("pod1a"))
	remote.Ports[0].NodePort = 31001
	remote.ExternalTrafficPolicy = PolicyLocal
	apply(t, p, s, remote)
	for range 10 {
		if r := ask(t, c.outside, "tcp", node0Ext+":31000"); r.Name != "pod0a" || r.Source.Addr() != netip.MustParseAddr(outsideIP) {
			t.Fatalf("%+v", r)
		}
	}
	if r, err := probe.Ask(c.outside, "tcp", netip.MustParseAddrPort(node0Ext+":31001"), 300*time.Millisecond); err == nil {
		t.Errorf("no local endpoint, yet answered: %+v", r)
	}
	// Cluster traffic to the same Service still uses every endpoint.
	client := c.addPod("client", 0, "10.200.0.9")
	eventually(t, client.ns, "tcp", "10.96.0.41:80", func(r probe.Reply) bool { return r.Name == "pod1a" })
}

// testNoEndpointsRejected: a Service without endpoints answers with a
// rejection at once instead of swallowing packets.
func testNoEndpointsRejected(t *testing.T, c *cluster) {
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	s := svc("empty", "10.96.0.50", TCP, 80, nil)
	s.Ports[0].NodePort = 31050
	apply(t, p, s)
	for _, tc := range []struct {
		from, dst string
	}{{"client", "10.96.0.50:80"}, {"node", "10.96.0.50:80"}, {"outside", node0Ext + ":31050"}} {
		from := map[string]*netns.NS{"client": client.ns, "node": c.node0, "outside": c.outside}[tc.from]
		start := time.Now()
		_, err := probe.Ask(from, "tcp", netip.MustParseAddrPort(tc.dst), 5*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > 2*time.Second {
			t.Errorf("%s → %s: %v after %v, want connection refused at once", tc.from, tc.dst, err, time.Since(start))
		}
	}
}

// testUDPEndpointRemoval: after a UDP endpoint is removed, the next
// datagram from the same client socket reaches a live endpoint, though the
// removed one still answers: its conntrack entry was deleted.
func testUDPEndpointRemoval(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	s := svc("dns", "10.96.0.10", UDP, 53, c.endpoints("pod0a", "pod1a"))
	apply(t, p, s)
	var conn *net.UDPConn
	must(t, client.ns.Do(func() error {
		var err error
		conn, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.200.0.9:40053")), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.96.0.10:53")))
		return err
	}))
	defer conn.Close()
	query := func() string { return askUDP(t, conn) }
	first := query()
	if again := query(); again != first {
		t.Fatalf("same socket changed endpoint: %s then %s", first, again)
	}
	keep := "pod1a"
	if first == "pod1a" {
		keep = "pod0a"
	}
	s.Endpoints = c.endpoints(keep)
	res := apply(t, p, s)
	if res.Full || res.Flows == 0 {
		t.Errorf("sync: %+v, want a partial sync deleting flows", res)
	}
	if got := query(); got != keep {
		t.Errorf("after removing %s: answered by %s", first, got)
	}
	flows, err := conntrack.List(context.Background(), c.node0, conntrack.Filter{Protocol: conntrack.UDP, ReplySrc: c.pods[first].addr}.Match)
	must(t, err)
	if len(flows) != 0 {
		t.Errorf("flows to the removed endpoint remain: %v", flows)
	}
}

// askUDP sends on conn until a datagram answers (5 s at most) and
// returns the name the server put last in it.
func askUDP(t *testing.T, conn *net.UDPConn) string {
	t.Helper()
	buf := make([]byte, 200)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		conn.Write([]byte("who\n"))
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, err := conn.Read(buf); err == nil {
			f := strings.Fields(string(buf[:n]))
			return f[len(f)-1]
		}
	}
	t.Fatal("no UDP answer")
	return ""
}

// testUDPTargetPortChange: when a UDP Service's target port changes on
// the same endpoint pod, the next datagram from the same client socket
// reaches the new port, though the old one still answers: the flow to
// the endpoint's old address and port was deleted (the e2e test
// "Conntrack should be able to cleanup conntrack entries when UDP
// service target port changes for a NodePort service").
func testUDPTargetPortChange(t *testing.T, c *cluster) {
	server := c.addPod("pod1a", 1, "10.200.1.2")
	srv, err := probe.Serve(server.ns, netip.MustParseAddrPort("10.200.1.2:9090"), "port-9090")
	must(t, err)
	defer srv.Close()
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	s := svc("dns", "10.96.0.10", UDP, 53, c.endpoints("pod1a"))
	apply(t, p, s)
	var conn *net.UDPConn
	must(t, client.ns.Do(func() error {
		var err error
		conn, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.200.0.9:40054")), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.96.0.10:53")))
		return err
	}))
	defer conn.Close()
	query := func() string { return askUDP(t, conn) }
	if got := query(); got != "pod1a" {
		t.Fatalf("target port 8080 answered by %s, want pod1a", got)
	}
	s.Ports[0].TargetPort = 9090
	res := apply(t, p, s)
	if res.Full || res.Flows == 0 {
		t.Errorf("sync: %+v, want a partial sync deleting flows", res)
	}
	if got := query(); got != "port-9090" {
		t.Errorf("after the target port moved to 9090: answered by %s, want port-9090", got)
	}
}

// testSyncKeepsConnections: partial syncs of other Services, a restart of
// the proxy (a new Proxy's full sync) and a canary-triggered resync leave
// an established connection working; flushing the tables is noticed and
// repaired.
func testSyncKeepsConnections(t *testing.T, c *cluster) {
	c.addPod("pod1a", 1, "10.200.1.2")
	c.addPod("pod0a", 0, "10.200.0.2")
	client := c.addPod("client", 0, "10.200.0.9")
	echoServer(t, c.pods["pod1a"].ns, netip.MustParseAddrPort("10.200.1.2:9000"), "echo")
	p := c.proxy()
	a := svc("a", "10.96.0.60", TCP, 9000, c.endpoints("pod1a"))
	a.Ports[0].TargetPort = 9000
	b := svc("b", "10.96.0.61", TCP, 80, c.endpoints("pod0a"))
	apply(t, p, a, b)
	var conn net.Conn
	must(t, client.ns.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", "10.96.0.60:9000", 2*time.Second)
		return err
	}))
	defer conn.Close()
	check := func(step string) {
		t.Helper()
		if got, err := roundTrip(conn, step); err != nil || got != "echo "+step {
			t.Fatalf("%s: %q %v", step, got, err)
		}
	}
	check("before")
	b.Endpoints = c.endpoints("pod1a")
	if res := apply(t, p, b, svc("c", "10.96.0.62", TCP, 80, c.endpoints("pod0a"))); res.Full || res.Services != 2 {
		t.Errorf("partial sync: %+v", res)
	}
	check("after-partial")
	eventually(t, client.ns, "tcp", "10.96.0.61:80", func(r probe.Reply) bool { return r.Name == "pod1a" })

	// A restarted proxy: a new Proxy, same Services, full sync.
	p2 := c.proxy()
	if res := apply(t, p2, a, b); !res.Full {
		t.Errorf("restart: %+v", res)
	}
	check("after-restart")
	if c.mode == ModeIptables {
		if got := strings.Count(saveNAT(t, c), "podnet service portals"); got != 2 {
			t.Errorf("%d portal jumps after restart, want 2 (PREROUTING, OUTPUT)", got)
		}
	}
	if strings.Contains(c.ruleset(t), "10.96.0.62") {
		t.Error("restart kept Service c, which the new proxy does not have")
	}

	// Someone flushes the nat table (iptables), or the proxy's table (nftables).
	flush := [][]string{{"iptables", "-w", "-t", "nat", "-F"}, {"iptables", "-w", "-t", "nat", "-X"}}
	if c.mode == ModeNftables {
		flush = [][]string{{"nft", "flush", "table", "ip", "podnet-proxy"}}
	}
	for _, args := range flush {
		if _, err := execns.Output(context.Background(), c.node0, nil, args[0], args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	res, err := p2.Sync(context.Background())
	if err != nil || !res.Full || res.Reason != "canary chain missing" {
		t.Fatalf("after flush: %+v %v", res, err)
	}
	check("after-resync")
	eventually(t, client.ns, "tcp", "10.96.0.61:80", func(r probe.Reply) bool { return r.Name == "pod1a" })
}

// ruleset returns the node's nat rules (iptables-save) or the proxy's
// tables (nft list).
func (c *cluster) ruleset(t *testing.T) string {
	t.Helper()
	if c.mode == ModeIptables {
		return saveNAT(t, c)
	}
	out, err := execns.Output(context.Background(), c.node0, nil, "nft", "list", "ruleset")
	must(t, err)
	return string(out)
}

func saveNAT(t *testing.T, c *cluster) string {
	t.Helper()
	out, err := execns.Output(context.Background(), c.node0, nil, "iptables-save", "-t", "nat")
	must(t, err)
	return string(out)
}

// testIPv6: an IPv6-only Service over TCP and UDP from a pod keeps the
// pod's address; from the node (off the cluster network) it is
// masqueraded to the node's address; a NodePort from outside reaches a
// pod on the other node.
func testIPv6(t *testing.T, c *cluster) {
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy(dualStack)
	s := svc("web6", "fd00:96::20", TCP, 80, c.endpoints6("pod1a"))
	s.Ports[0].NodePort = 31080
	u := svc("dns6", "fd00:96::10", UDP, 53, c.endpoints6("pod1a"))
	apply(t, p, s, u)
	if r := ask(t, client.ns, "tcp", "[fd00:96::20]:80"); r.Name != "pod1a" || r.Source.Addr() != client.addr6 {
		t.Errorf("tcp: %+v", r)
	}
	if r := ask(t, client.ns, "udp", "[fd00:96::10]:53"); r.Name != "pod1a" || r.Source.Addr() != client.addr6 {
		t.Errorf("udp: %+v", r)
	}
	if r := ask(t, c.node0, "tcp", "[fd00:96::20]:80"); r.Name != "pod1a" || r.Source.Addr() != netip.MustParseAddr(node0IP6) {
		t.Errorf("from node: %+v", r)
	}
	if r := ask(t, c.outside, "tcp", "["+node0Ext6+"]:31080"); r.Name != "pod1a" || r.Source.Addr() != netip.MustParseAddr(node0IP6) {
		t.Errorf("node port from outside: %+v", r)
	}
}

// testDualStack: one Service with a cluster IP in each family answers on
// both, each from the endpoints of its own family.
func testDualStack(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy(dualStack)
	s := svc("web", "10.96.0.20", TCP, 80, append(c.endpoints("pod0a"), c.endpoints6("pod1a")...))
	s.ClusterIPs = append(s.ClusterIPs, netip.MustParseAddr("fd00:96::20"))
	apply(t, p, s)
	if r := ask(t, client.ns, "tcp", "10.96.0.20:80"); r.Name != "pod0a" || r.Source.Addr() != client.addr {
		t.Errorf("IPv4: %+v", r)
	}
	if r := ask(t, client.ns, "tcp", "[fd00:96::20]:80"); r.Name != "pod1a" || r.Source.Addr() != client.addr6 {
		t.Errorf("IPv6: %+v", r)
	}
}

// testSCTP: an SCTP Service port is programmed; with SCTP sockets in the
// kernel, an association through it reaches the endpoint.
func testSCTP(t *testing.T, c *cluster) {
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	apply(t, p, svc("sig", "10.96.0.70", SCTP, 3868, c.endpoints("pod1a")))
	rules := c.ruleset(t)
	want := "10.96.0.70 . sctp . 3868"
	if c.mode == ModeIptables {
		want = "-d 10.96.0.70/32 -p sctp -m comment --comment \"default/sig:p cluster IP\" -m sctp --dport 3868"
	}
	if !strings.Contains(rules, want) {
		t.Fatalf("no %q in\n%s", want, rules)
	}
	// An SCTP echo of one message: the server sends its name on each
	// association it accepts.
	var lfd int
	err := c.pods["pod1a"].ns.Do(func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
		if err != nil {
			return err
		}
		lfd = fd
		if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: 8080, Addr: [4]byte{10, 200, 1, 2}}); err != nil {
			return err
		}
		return syscall.Listen(fd, 8)
	})
	if errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.ESOCKTNOSUPPORT) {
		t.Skipf("rules checked; no SCTP sockets in this kernel (%v), so no traffic", err)
	}
	must(t, err)
	t.Cleanup(func() { syscall.Close(lfd) })
	go func() {
		for {
			fd, _, err := syscall.Accept(lfd)
			if err != nil {
				return
			}
			syscall.Write(fd, []byte("pod1a"))
			syscall.Close(fd)
		}
	}()
	var got string
	must(t, client.ns.Do(func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		tv := syscall.Timeval{Sec: 2}
		syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
		syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
		if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: 3868, Addr: [4]byte{10, 96, 0, 70}}); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, err := syscall.Read(fd, buf)
		if err != nil {
			return err
		}
		got = string(buf[:n])
		return nil
	}))
	if got != "pod1a" {
		t.Errorf("SCTP through the Service: %q", got)
	}
}

// testTerminatingFallback: a serving terminating endpoint takes no new
// connections while a ready one exists, and takes them all when it is the
// only one left.
func testTerminatingFallback(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	eps := c.endpoints("pod0a", "pod1a")
	eps[1].Ready, eps[1].Terminating = false, true
	s := svc("web", "10.96.0.20", TCP, 80, eps)
	apply(t, p, s)
	for range 10 {
		if r := ask(t, client.ns, "tcp", "10.96.0.20:80"); r.Name != "pod0a" {
			t.Fatalf("a terminating endpoint took a new connection: %+v", r)
		}
	}
	s.Endpoints = eps[1:]
	apply(t, p, s)
	for range 5 {
		if r := ask(t, client.ns, "tcp", "10.96.0.20:80"); r.Name != "pod1a" {
			t.Fatalf("only the terminating endpoint is left, yet: %+v", r)
		}
	}
}

// testReadyTerminating: an endpoint both Ready and Terminating — what
// the EndpointSlice controller writes for a terminating, unready pod of
// a Service with publishNotReadyAddresses — takes new connections beside
// the other ready ones, as kube-proxy has it (the e2e test "Services
// should create endpoints for unready pods").
func testReadyTerminating(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	eps := c.endpoints("pod0a", "pod1a")
	eps[1].Serving, eps[1].Terminating = false, true
	s := svc("web", "10.96.0.20", TCP, 80, eps[1:])
	apply(t, p, s)
	if r := ask(t, client.ns, "tcp", "10.96.0.20:80"); r.Name != "pod1a" {
		t.Fatalf("the ready terminating endpoint alone: %+v", r)
	}
	s.Endpoints = eps
	apply(t, p, s)
	seen := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < 2 && time.Now().Before(deadline) {
		seen[ask(t, client.ns, "tcp", "10.96.0.20:80").Name] = true
	}
	if !seen["pod0a"] || !seen["pod1a"] {
		t.Errorf("with another ready endpoint, new connections reached %v, want both", seen)
	}
}

// testExternalIP: an external IP routed to node0 reaches the endpoint from
// outside, masqueraded (policy Cluster).
func testExternalIP(t *testing.T, c *cluster) {
	c.addPod("pod1a", 1, "10.200.1.2")
	must(t, route.Ensure(c.outside, route.Route{Dst: pfx("203.0.113.7/32"), Gateway: netip.MustParseAddr(node0Ext), Dev: "eth0"}))
	p := c.proxy()
	s := svc("ext", "10.96.0.80", TCP, 80, c.endpoints("pod1a"))
	s.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.7")}
	apply(t, p, s)
	if r := ask(t, c.outside, "tcp", "203.0.113.7:80"); r.Name != "pod1a" || r.Source.Addr() != netip.MustParseAddr(node0IP) {
		t.Errorf("%+v", r)
	}
}

// testAffinityTimeout: with a 1 s ClientIP affinity, a client that stays
// idle longer than that is balanced afresh: over idle periods it reaches
// another of the three endpoints (the chance that ten fresh picks all
// land on the first is 3^-10). The wait is the timeout under test, not
// synchronisation.
func testAffinityTimeout(t *testing.T, c *cluster) {
	c.addPod("pod0a", 0, "10.200.0.2")
	c.addPod("pod1a", 1, "10.200.1.2")
	c.addPod("pod1b", 1, "10.200.1.3")
	client := c.addPod("client", 0, "10.200.0.9")
	p := c.proxy()
	s := svc("web", "10.96.0.20", TCP, 80, c.endpoints("pod0a", "pod1a", "pod1b"))
	s.Affinity, s.AffinitySeconds = AffinityClientIP, 1
	apply(t, p, s)
	first := ask(t, client.ns, "tcp", "10.96.0.20:80").Name
	if again := ask(t, client.ns, "tcp", "10.96.0.20:80").Name; again != first {
		t.Fatalf("within the timeout: %s then %s", first, again)
	}
	for range 10 {
		time.Sleep(1200 * time.Millisecond) // let the affinity expire
		if r := ask(t, client.ns, "tcp", "10.96.0.20:80"); r.Name != first {
			return
		}
	}
	t.Errorf("after ten idle periods longer than the timeout, still only %s", first)
}
