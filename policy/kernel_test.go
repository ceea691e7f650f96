package policy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/service"
)

func TestMain(m *testing.M) { nstest.Main(m) }

// TestTruthTables: every upstream-style case on a real kernel, with 3
// namespaces x 3 pods on two bridged nodes, TCP and UDP on two ports,
// every pair probed; the expected table comes from the reference
// semantics. The cases run one after the other on one cluster, so each
// change of case is a partial sync of both nodes; some run in IPv6 too.
func TestTruthTables(t *testing.T) {
	w := newWorld(0)
	c := newCluster(t, w)
	c.apply(w)
	c.converge(w, nil, false) // no policy: everything flows
	v6 := map[string]bool{"DenyAllIngress": true, "AllowFromPodSelector": true, "BothDirections": true, "NamedPorts": true}
	for _, tc := range policyCases() {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			w.policies = tc.policies
			c.apply(w)
			c.converge(w, tc.ports, false)
			if v6[tc.name] {
				c.converge(w, tc.ports, true)
			}
		})
	}
}

// TestAdminTruthTables: every admin case on a real kernel, on the same
// two bridged nodes, every pair probed, one case after the other (partial
// syncs); the expected table comes from the reference semantics. Some
// run in IPv6 too.
func TestAdminTruthTables(t *testing.T) {
	w := newWorld(0)
	c := newCluster(t, w)
	v6 := map[string]bool{"PassToBaseline": true, "AdminPorts": true, "EgressNetworks": true}
	for _, tc := range adminCases() {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			tc.apply(w)
			c.apply(w)
			c.converge(w, tc.ports, false)
			if v6[tc.name] {
				c.converge(w, tc.ports, true)
			}
		})
	}
}

// TestAdminNodesPeers: admin and baseline nodes peers on a real kernel:
// every pod probes the node it does not run on (served at the node's
// address on the link), in both families, until the traffic matches the
// reference.
func TestAdminNodesPeers(t *testing.T) {
	w := newWorld(0)
	c := newCluster(t, w)
	for i, n := range c.nodes {
		for _, v6 := range []bool{false, true} {
			for _, port := range testPorts {
				srv, err := probe.Serve(n, netip.AddrPortFrom(nodeAddr(i, v6), port), fmt.Sprintf("node%d", i))
				must(t, err)
				t.Cleanup(func() { srv.Close() })
			}
		}
	}
	nodesCase(w)
	c.apply(w)
	for _, v6 := range []bool{false, true} {
		want := w.nodeExpected(v6)
		deadline := time.Now().Add(20 * time.Second)
		for {
			got := map[probeKey]bool{}
			for k := range want {
				dst := netip.AddrPortFrom(nodeAddr(int(k.dst[len(k.dst)-1]-'0'), v6), k.port)
				r, err := probe.Ask(c.pods[k.src], map[Protocol]string{TCP: "tcp", UDP: "udp"}[k.proto], dst, 400*time.Millisecond)
				got[k] = err == nil && r.Name == k.dst
			}
			d := matrixDiff(got, want)
			if len(d) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("v6=%v: %d of %d probes differ from the reference:\n%s", v6, len(d), len(want), joinLines(d))
			}
		}
	}
}

// TestRelabel: a pod relabelled into and out of a policy's peer selector
// (on the other node), a namespace relabelled into and out of one, and a
// pod relabelled out of a policy's pod selector.
func TestRelabel(t *testing.T) {
	w := newWorld(0)
	w.policies = []Policy{
		{Name: Name{"x", "from-b"}, PodSelector: *sel("pod", "a"), Types: Ingress, Ingress: []Rule{{Peers: []Peer{{Pods: sel("pod", "b")}}}}},
		{Name: Name{"y", "from-ns-z"}, Types: Ingress, Ingress: []Rule{{Peers: []Peer{{Namespaces: sel("ns", "z")}}}}},
	}
	c := newCluster(t, w)
	steps := []struct {
		name   string
		change func()
	}{
		{"start", func() {}},
		{"x/c relabelled into the peer selector", func() { w.pod("x/c").Labels = map[string]string{"pod": "b"} }},
		{"x/c relabelled out of it", func() { w.pod("x/c").Labels = map[string]string{"pod": "c"} }},
		{"namespace x relabelled into ns=z", func() { w.namespaces["x"] = Namespace{Name: "x", Labels: map[string]string{"ns": "z"}} }},
		{"namespace x relabelled back", func() { w.namespaces["x"] = Namespace{Name: "x", Labels: nsLabels("x")} }},
		{"x/a relabelled out of the policy", func() { w.pod("x/a").Labels = map[string]string{"pod": "none"} }},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			c.t = t
			s.change()
			c.apply(w)
			c.converge(w, []uint16{80}, false)
		})
	}
}

// TestEstablishedConnections: a policy that starts to deny a connection
// leaves the established one alone (the documented rule: replies and
// established connections pass) and refuses new ones; deleting it lets
// new ones through again.
func TestEstablishedConnections(t *testing.T) {
	w := newWorld(0)
	c := newCluster(t, w)
	c.apply(w)
	server := netip.AddrPortFrom(podAddr("x", "a", false), 7000)
	echoServer(t, c.pods["x/a"], server)
	var conn net.Conn
	must(t, c.pods["y/c"].Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", server.String(), 5*time.Second)
		return err
	}))
	defer conn.Close()
	roundTrip(t, conn, "before")
	w.policies = []Policy{{Name: Name{"x", "deny"}, Types: Ingress}}
	c.apply(w)
	c.converge(w, []uint16{80}, false)
	if _, err := probe.Ask(c.pods["y/c"], "tcp", server, 500*time.Millisecond); err == nil {
		t.Error("a new connection passed the deny policy")
	}
	roundTrip(t, conn, "during") // established: passes
	w.policies = nil
	c.apply(w)
	c.converge(w, []uint16{80}, false)
	roundTrip(t, conn, "after")
}

func roundTrip(t *testing.T, conn net.Conn, msg string) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("%s: %v", msg, err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != msg+"\n" {
		t.Fatalf("%s: got %q, %v", msg, line, err)
	}
}

// TestNodeAndHairpin: with every pod of x isolated both ways, the node
// still reaches them (kubelet probes, from the bridge's address) and a
// pod still reaches itself through a Service (the service proxy's DNAT
// and hairpin masquerade on the same node).
func TestNodeAndHairpin(t *testing.T) {
	w := newWorld(0)
	w.policies = []Policy{{Name: Name{"x", "deny"}, Types: Ingress | Egress}}
	c := newCluster(t, w)
	c.apply(w)
	c.converge(w, []uint16{80}, false)
	for _, v6 := range []bool{false, true} {
		if _, err := probe.Poll(c.nodes[0], "tcp", netip.AddrPortFrom(w.pod("x/a").IPs[b2i(v6)], 80), 5*time.Second); err != nil {
			t.Errorf("node to isolated pod: %v", err)
		}
	}
	p, err := service.New(service.Config{Backend: service.Nftables(c.nodes[0]), NodeName: "node0", ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}})
	must(t, err)
	t.Cleanup(func() { p.Cleanup(context.Background()) })
	must(t, p.Update(service.Service{Name: service.Name{Namespace: "x", Name: "web"}, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:     []service.Port{{Name: "http", Port: 80, TargetPort: 80}},
		Endpoints: []service.Endpoint{{Addr: podAddr("x", "a", false), Ready: true, Serving: true, NodeName: "node0"}}}))
	_, err = p.Sync(context.Background())
	must(t, err)
	if r, err := probe.Poll(c.pods["x/a"], "tcp", netip.MustParseAddrPort("10.96.0.10:80"), 5*time.Second); err != nil || r.Name != "x/a" {
		t.Errorf("hairpin through the Service: %+v %v", r, err)
	}
	if _, err := probe.Ask(c.pods["x/b"], "tcp", netip.MustParseAddrPort("10.96.0.10:80"), 500*time.Millisecond); err == nil {
		t.Error("another isolated pod reached x/a through the Service")
	}
}

// TestBridgeNetfilter: the first sync turns bridge-nf-call-iptables on,
// without which two pods of one bridge would bypass the policies.
func TestBridgeNetfilter(t *testing.T) {
	w := newWorld(0)
	w.policies = []Policy{{Name: Name{"x", "deny"}, Types: Ingress}}
	c := newCluster(t, w)
	for _, n := range c.nodes {
		must(t, sysctl.Set(n, "net.bridge.bridge-nf-call-iptables", "0"))
	}
	c.apply(w)
	for _, k := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"} {
		if v, err := sysctl.Get(c.nodes[0], k); err != nil || v != "1" {
			t.Errorf("%s = %q, %v after the first sync", k, v, err)
		}
	}
	c.converge(w, []uint16{80}, false)
	// Turned off by someone else: same-bridge traffic bypasses the hook.
	must(t, sysctl.Set(c.nodes[0], "net.bridge.bridge-nf-call-iptables", "0"))
	if _, err := probe.Poll(c.pods["x/b"], "tcp", netip.AddrPortFrom(podAddr("x", "a", false), 80), 5*time.Second); err != nil {
		t.Errorf("without br_netfilter, same-bridge traffic should bypass the forward hook: %v", err)
	}
	if _, err := probe.Ask(c.pods["y/c"], "tcp", netip.AddrPortFrom(podAddr("x", "a", false), 80), 500*time.Millisecond); err == nil {
		t.Error("routed traffic passed the deny policy")
	}
}

// TestKernelVerifyRepairs: elements deleted and a chain flushed with nft
// read as differences against the kernel's own answers, and the next
// sync repairs the table.
func TestKernelVerifyRepairs(t *testing.T) {
	w := newWorld(0)
	w.policies = policyCases()[6].policies // ipBlock with except: interval sets
	w.policies = append(w.policies, policyCases()[7].policies...)
	c := newCluster(t, w)
	c.apply(w)
	e := c.enforcers[0]
	if ok, err := e.Verify(context.Background()); !ok || err != nil {
		t.Fatalf("fresh table: Verify = %v, %v", ok, err)
	}
	for _, cmd := range []string{
		"delete element inet podnet-policy ingress-ip { 10.244.0.10 }",
		"flush chain inet podnet-policy ingress",
		"delete table inet podnet-policy",
	} {
		out, err := execns.Output(context.Background(), c.nodes[0], strings.NewReader(cmd+"\n"), "nft", "-f", "-")
		if err != nil {
			t.Fatalf("%s: %v %s", cmd, err, out)
		}
		if ok, _ := e.Verify(context.Background()); ok {
			t.Errorf("after %q: Verify = %v, %v; want false", cmd, ok, err)
		}
		res, err := e.Sync(context.Background())
		if err != nil || !res.Full {
			t.Fatalf("after %q: %+v %v, want a full sync", cmd, res, err)
		}
		if ok, err := e.Verify(context.Background()); !ok || err != nil {
			t.Fatalf("after the repair of %q: Verify = %v, %v", cmd, ok, err)
		}
		c.converge(w, nil, false)
	}
}

// TestKernelDeniedCounters: the packets a deny policy drops are counted
// in the kernel's named counters, as Denied reads them, and a full sync
// carries the counts over.
func TestKernelDeniedCounters(t *testing.T) {
	w := newWorld(0)
	w.policies = policyCases()[0].policies // deny all ingress in x
	c := newCluster(t, w)
	c.apply(w)
	c.converge(w, nil, false) // probes every pair: connections to x's pods are dropped
	e := c.enforcers[0]
	ctx := context.Background()
	in, eg, err := e.Denied(ctx)
	if err != nil || in == 0 || eg != 0 {
		t.Fatalf("Denied = %d ingress, %d egress, %v; want ingress drops only", in, eg, err)
	}
	e.RequestFullSync("test")
	if res, err := e.Sync(ctx); err != nil || !res.Full {
		t.Fatalf("Sync = %+v, %v; want a full one", res, err)
	}
	if after, _, err := e.Denied(ctx); err != nil || after < in {
		t.Errorf("after a full sync Denied = %d, %v; want at least %d", after, err, in)
	}
}

// echoServer serves, in ns on ap, TCP connections that echo every line
// back and stay open until the client ends them.
func echoServer(t *testing.T, ns *netns.NS, ap netip.AddrPort) {
	t.Helper()
	srv, err := probe.ServeEcho(ns, ap, "")
	must(t, err)
	t.Cleanup(func() { srv.Close() })
}
