package policy

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/bridge"
	"github.com/podnet/podnet/internal/sysctl"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/netns/nstest/probe"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

// cluster is two nodes in throwaway namespaces, each with a bridge cni0
// joining its pods (the world's pods a and b on node0, c on node1), routed
// to each other:
//
//	node0 cni0 10.244.0.1/24 fd00:244:0::1/64 — eth1 10.240.0.10 ══ eth1 10.240.0.11 — node1 cni0 10.244.1.1/24
//
// Every pod serves TCP and UDP on ports 80, 81 and 53 (both families),
// and each node runs an Enforcer over the same model.
type cluster struct {
	t         *testing.T
	nodes     [2]*netns.NS
	pods      map[string]*netns.NS // by "ns/name"
	enforcers [2]*Enforcer
}

func newHost(t *testing.T) *netns.NS {
	ns := nstest.New(t)
	for _, k := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
		must(t, sysctl.Set(ns, k, "0"))
	}
	return ns
}

func gateway(node int, v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:244:%d::1", node))
	}
	return netip.AddrFrom4([4]byte{10, 244, byte(node), 1})
}

func newCluster(t *testing.T, w *world) *cluster {
	t.Helper()
	c := &cluster{t: t, pods: map[string]*netns.NS{}}
	w.enforced = func(*Pod) bool { return true } // each node enforces its own pods
	for i := range c.nodes {
		n := newHost(t)
		c.nodes[i] = n
		_, err := bridge.Ensure(n, bridge.Spec{Name: "cni0"})
		must(t, err)
		must(t, bridge.EnsureAddr(n, "cni0", netip.PrefixFrom(gateway(i, false), 24), bridge.AddrOptions{}))
		must(t, bridge.EnsureAddr(n, "cni0", netip.PrefixFrom(gateway(i, true), 64), bridge.AddrOptions{}))
		must(t, route.SetForwarding(n, 4, true))
		must(t, route.SetForwarding(n, 6, true))
	}
	_, err := veth.Create(c.nodes[0], veth.Spec{Name: "eth1", PeerName: "eth1", PeerNS: c.nodes[1]})
	must(t, err)
	for i, n := range c.nodes {
		other := 1 - i
		must(t, addr.Ensure(n, "eth1", pfx(fmt.Sprintf("10.240.0.1%d/24", i))))
		must(t, addr.Ensure(n, "eth1", pfx(fmt.Sprintf("fd00:240::1%d/64", i))))
		must(t, route.Ensure(n, route.Route{Dst: pfx(fmt.Sprintf("10.244.%d.0/24", other)), Gateway: netip.MustParseAddr(fmt.Sprintf("10.240.0.1%d", other))}))
		must(t, route.Ensure(n, route.Route{Dst: pfx(fmt.Sprintf("fd00:244:%d::/64", other)), Gateway: netip.MustParseAddr(fmt.Sprintf("fd00:240::1%d", other))}))
	}
	for i := range w.pods {
		c.addPod(&w.pods[i])
	}
	for i, n := range c.nodes {
		e, err := New(Config{NetNS: n})
		must(t, err)
		t.Cleanup(func() { e.Cleanup(context.Background()) })
		c.enforcers[i] = e
	}
	return c
}

// addPod creates pod p's namespace on its node's bridge, with servers.
func (c *cluster) addPod(p *Pod) {
	t := c.t
	node := 0
	if p.Name.Name == "c" {
		node = 1
	}
	ns := newHost(t)
	host := "v" + p.Namespace + p.Name.Name
	_, err := veth.Create(c.nodes[node], veth.Spec{Name: host, PeerName: "eth0", PeerNS: ns, AddrGenModeNone: true})
	must(t, err)
	must(t, bridge.Attach(c.nodes[node], "cni0", host, bridge.PortOptions{Hairpin: true}))
	must(t, addr.Ensure(ns, "eth0", netip.PrefixFrom(p.IPs[0], 24)))
	must(t, addr.Ensure(ns, "eth0", netip.PrefixFrom(p.IPs[1], 64)))
	must(t, route.EnsureDefault(ns, gateway(node, false), "eth0"))
	must(t, route.EnsureDefault(ns, gateway(node, true), "eth0"))
	for _, a := range p.IPs {
		for _, port := range []uint16{80, 81, 53} {
			srv, err := probe.Serve(ns, netip.AddrPortFrom(a, port), p.Name.String())
			must(t, err)
			t.Cleanup(func() { srv.Close() })
		}
	}
	c.pods[p.Name.String()] = ns
}

// apply gives both enforcers the world, each with its own pods local, and
// syncs them.
func (c *cluster) apply(w *world) {
	c.t.Helper()
	for i, e := range c.enforcers {
		local := *w
		local.pods = append([]Pod(nil), w.pods...)
		for j := range local.pods {
			local.pods[j].Local = (local.pods[j].Name.Name == "c") == (i == 1)
		}
		replaceModel(c.t, e, &local)
	}
}

// observe probes every pair of want concurrently, once each.
func (c *cluster) observe(w *world, want map[probeKey]bool, v6 bool) map[probeKey]bool {
	got := map[probeKey]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 48)
	for k := range want {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			dst := netip.AddrPortFrom(w.pod(k.dst).IPs[b2i(v6)], k.port)
			r, err := probe.Ask(c.pods[k.src], map[Protocol]string{TCP: "tcp", UDP: "udp"}[k.proto], dst, 400*time.Millisecond)
			mu.Lock()
			got[k] = err == nil && r.Name == k.dst
			mu.Unlock()
		}()
	}
	wg.Wait()
	return got
}

// converge probes until the traffic matches the reference's truth table
// for w, or fails the test after the deadline with the differences.
func (c *cluster) converge(w *world, ports []uint16, v6 bool) {
	c.t.Helper()
	want := w.expected(ports, v6)
	deadline := time.Now().Add(20 * time.Second)
	for {
		d := matrixDiff(c.observe(w, want, v6), want)
		if len(d) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%d of %d probes differ from the reference:\n%s", len(d), len(want), joinLines(d))
		}
	}
}

func joinLines(l []string) string {
	out := ""
	for _, s := range l {
		out += s + "\n"
	}
	return out
}
