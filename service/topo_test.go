package service

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

// cluster is a two-node cluster in throwaway namespaces, routed without
// bridges (each pod a /32 behind its own veth, so all pod traffic passes
// the node's netfilter hooks):
//
//	outside 192.168.50.2 ── ext0 192.168.50.1 [node0] eth1 10.240.0.10 ── eth1 10.240.0.11 [node1]
//	node0 pods 10.200.0.0/24 (gateway 10.200.0.1), node1 pods 10.200.1.0/24 (gateway 10.200.1.1)
//
// Every link also has an IPv6 address: fd00:240::10 and ::11 between the
// nodes, fd00:50::1 and ::2 outside, pods fd00:200:N::M for 10.200.N.M.
//
// node0 runs the proxy; its default route points outside, so traffic to a
// Service IP without rules is forwarded (and meets the filter rules).
type cluster struct {
	t                     *testing.T
	node0, node1, outside *netns.NS
	pods                  map[string]*pod
	mode                  Mode
}

type pod struct {
	name  string
	ns    *netns.NS
	addr  netip.Addr
	addr6 netip.Addr
}

const (
	node0IP   = "10.240.0.10"
	node1IP   = "10.240.0.11"
	outsideIP = "192.168.50.2"
	node0Ext  = "192.168.50.1"

	node0IP6   = "fd00:240::10"
	node1IP6   = "fd00:240::11"
	outsideIP6 = "fd00:50::2"
	node0Ext6  = "fd00:50::1"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func newCluster(t *testing.T, mode Mode) *cluster {
	t.Helper()
	c := &cluster{t: t, mode: mode, node0: newHost(t), node1: newHost(t), outside: newHost(t), pods: map[string]*pod{}}
	_, err := veth.Create(c.node0, veth.Spec{Name: "eth1", PeerName: "eth1", PeerNS: c.node1})
	must(t, err)
	_, err = veth.Create(c.node0, veth.Spec{Name: "ext0", PeerName: "eth0", PeerNS: c.outside})
	must(t, err)
	must(t, addr.Ensure(c.node0, "eth1", pfx(node0IP+"/24")))
	must(t, addr.Ensure(c.node1, "eth1", pfx(node1IP+"/24")))
	must(t, addr.Ensure(c.node0, "ext0", pfx(node0Ext+"/24")))
	must(t, addr.Ensure(c.outside, "eth0", pfx(outsideIP+"/24")))
	must(t, route.EnsureDefault(c.outside, netip.MustParseAddr(node0Ext), "eth0"))
	must(t, route.EnsureDefault(c.node0, netip.MustParseAddr(outsideIP), "ext0"))
	must(t, route.EnsureDefault(c.node1, netip.MustParseAddr(node0IP), "eth1"))
	must(t, route.Ensure(c.node0, route.Route{Dst: pfx("10.200.1.0/24"), Gateway: netip.MustParseAddr(node1IP), Dev: "eth1"}))
	must(t, addr.Ensure(c.node0, "eth1", pfx(node0IP6+"/64")))
	must(t, addr.Ensure(c.node1, "eth1", pfx(node1IP6+"/64")))
	must(t, addr.Ensure(c.node0, "ext0", pfx(node0Ext6+"/64")))
	must(t, addr.Ensure(c.outside, "eth0", pfx(outsideIP6+"/64")))
	must(t, route.EnsureDefault(c.outside, netip.MustParseAddr(node0Ext6), "eth0"))
	must(t, route.EnsureDefault(c.node0, netip.MustParseAddr(outsideIP6), "ext0"))
	must(t, route.EnsureDefault(c.node1, netip.MustParseAddr(node0IP6), "eth1"))
	must(t, route.Ensure(c.node0, route.Route{Dst: pfx("fd00:200:1::/64"), Gateway: netip.MustParseAddr(node1IP6), Dev: "eth1"}))
	for _, n := range []*netns.NS{c.node0, c.node1} {
		must(t, route.SetForwarding(n, 4, true))
		must(t, route.SetForwarding(n, 6, true))
	}
	return c
}

// newHost returns a namespace whose links skip IPv6 duplicate address
// detection, so their link-local addresses (which neighbour discovery
// between routers uses) work at once.
func newHost(t *testing.T) *netns.NS {
	ns := nstest.New(t)
	for _, k := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
		must(t, sysctl.Set(ns, k, "0"))
	}
	return ns
}

// v6 returns the IPv6 address of a pod or gateway: fd00:200:N::M for
// 10.200.N.M.
func v6(a netip.Addr) netip.Addr {
	b := a.As4()
	return netip.MustParseAddr(fmt.Sprintf("fd00:200:%x::%x", b[2], b[3]))
}

// addPod creates a pod namespace with address a on node (0 or 1) and a
// probe server named name on port 8080 (TCP and UDP).
func (c *cluster) addPod(name string, node int, a string) *pod {
	c.t.Helper()
	n, gw := c.node0, "10.200.0.1"
	if node == 1 {
		n, gw = c.node1, "10.200.1.1"
	}
	p := &pod{name: name, ns: newHost(c.t), addr: netip.MustParseAddr(a)}
	p.addr6 = v6(p.addr)
	gw6 := v6(netip.MustParseAddr(gw))
	host := "v" + name
	_, err := veth.Create(n, veth.Spec{Name: host, PeerName: "eth0", PeerNS: p.ns})
	must(c.t, err)
	must(c.t, addr.Ensure(p.ns, "eth0", pfx(a+"/32")))
	must(c.t, addr.Ensure(n, host, pfx(gw+"/32")))
	must(c.t, route.Ensure(p.ns, route.Route{Dst: pfx(gw + "/32"), Dev: "eth0"}))
	must(c.t, route.EnsureDefault(p.ns, netip.MustParseAddr(gw), "eth0"))
	must(c.t, route.Ensure(n, route.Route{Dst: pfx(a + "/32"), Dev: host}))
	must(c.t, addr.Ensure(p.ns, "eth0", netip.PrefixFrom(p.addr6, 128)))
	must(c.t, addr.Ensure(n, host, netip.PrefixFrom(gw6, 128)))
	must(c.t, route.Ensure(p.ns, route.Route{Dst: netip.PrefixFrom(gw6, 128), Dev: "eth0"}))
	must(c.t, route.EnsureDefault(p.ns, gw6, "eth0"))
	must(c.t, route.Ensure(n, route.Route{Dst: netip.PrefixFrom(p.addr6, 128), Dev: host}))
	for _, ap := range []netip.AddrPort{netip.AddrPortFrom(p.addr, 8080), netip.AddrPortFrom(p.addr6, 8080)} {
		srv, err := probe.Serve(p.ns, ap, name)
		must(c.t, err)
		c.t.Cleanup(func() { srv.Close() })
	}
	c.pods[name] = p
	return p
}

// dualStack makes the proxy program both families, with both pod networks.
func dualStack(cfg *Config) {
	cfg.Families = []podnet.Family{podnet.IPv4, podnet.IPv6}
	cfg.ClusterCIDRs = []netip.Prefix{pfx("10.200.0.0/16"), pfx("fd00:200::/48")}
}

func (c *cluster) proxy(opts ...func(*Config)) *Proxy {
	c.t.Helper()
	cfg := Config{Backend: mustBackend(c.mode, c.node0), NodeName: "node0", ClusterCIDRs: []netip.Prefix{pfx("10.200.0.0/16")}}
	for _, o := range opts {
		o(&cfg)
	}
	p, err := New(cfg)
	must(c.t, err)
	c.t.Cleanup(func() { p.Cleanup(context.Background()) })
	return p
}

// endpoints returns ready endpoints for the named pods.
func (c *cluster) endpoints(names ...string) []Endpoint {
	var eps []Endpoint
	for _, n := range names {
		p := c.pods[n]
		node := "node0"
		if p.addr.As4()[2] == 1 {
			node = "node1"
		}
		eps = append(eps, Endpoint{Addr: p.addr, Ready: true, Serving: true, NodeName: node})
	}
	return eps
}

// endpoints6 returns ready IPv6 endpoints for the named pods.
func (c *cluster) endpoints6(names ...string) []Endpoint {
	eps := c.endpoints(names...)
	for i := range eps {
		eps[i].Addr = c.pods[names[i]].addr6
	}
	return eps
}

func apply(t *testing.T, p *Proxy, svcs ...Service) SyncResult {
	t.Helper()
	for _, s := range svcs {
		must(t, p.Update(s))
	}
	res, err := p.Sync(context.Background())
	must(t, err)
	return res
}

// ask sends one request and fails the test unless an answer comes.
func ask(t *testing.T, from *netns.NS, network string, dst string) probe.Reply {
	t.Helper()
	r, err := probe.Ask(from, network, netip.MustParseAddrPort(dst), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// eventually retries ask until want accepts the reply or the deadline
// passes; it returns the last reply.
func eventually(t *testing.T, from *netns.NS, network, dst string, want func(probe.Reply) bool) probe.Reply {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := probe.Ask(from, network, netip.MustParseAddrPort(dst), time.Second)
		if err == nil && want(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: last reply %+v, err %v", network, dst, r, err)
		}
	}
}

// echoServer answers each line on a connection with name and the line,
// keeping the connection open.
func echoServer(t *testing.T, ns *netns.NS, ap netip.AddrPort, name string) {
	t.Helper()
	srv, err := probe.ServeEcho(ns, ap, name+" ")
	must(t, err)
	t.Cleanup(func() { srv.Close() })
}

// roundTrip writes a line on conn and reads the answer.
func roundTrip(conn net.Conn, msg string) (string, error) {
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(conn, "%s\n", msg); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}
