package netpol

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/podnet/podnet/policy"
)

var (
	clientIP = netip.MustParseAddr("10.244.0.10")
	serverIP = netip.MustParseAddr("10.244.0.20")
	server   = netip.AddrPortFrom(serverIP, 8080)
)

// BenchmarkFirstPacket: new TCP connections per second from a client pod
// to a server pod of the same bridge, both selected by one policy (the
// client's egress to the server and the server's ingress from the client
// on 8080 allowed), with 0 (but the enforcer's table in place), 1, 100 and
// 1000 policies, each of the others selecting another local pod; and with
// no table at all. The nodes are set up side by side and sampled in turn,
// one second each, 7 rounds; medians.
func BenchmarkFirstPacket(b *testing.B) {
	for b.Loop() {
		settledMemory(b)
		configs := []int{-1, 0, 1, 100, 1000}
		rate := map[int][]float64{}
		measure := map[int]func() float64{}
		for _, n := range configs {
			measure[n] = firstPacketNode(b, n)
		}
		for range 7 {
			for _, n := range configs {
				rate[n] = append(rate[n], measure[n]())
			}
		}
		fmt.Printf("\nFirst packet: new TCP connections/s between two pods of one bridge, median of 7 one-second samples\n\n")
		fmt.Printf("| policies | conn/s | / no policy | / 1 policy |\n|---|---|---|---|\n")
		none, one := median(rate[0]), median(rate[1])
		for _, n := range configs {
			name := fmt.Sprint(n)
			if n < 0 {
				name = "no-table"
			}
			m := median(rate[n])
			fmt.Printf("| %s | %.0f | %.3f | %.3f |\n", name, m, m/none, m/one)
			b.ReportMetric(m, "conn/s@"+name)
		}
	}
}

// firstPacketNode sets up a node with a client and a server pod and n
// policies (-1: no enforcer) and returns a function that counts the
// connections the client makes in one second.
func firstPacketNode(b *testing.B, n int) func() float64 {
	nd := newNode(b)
	client, srv := nd.addPod(clientIP), nd.addPod(serverIP)
	serve(b, srv, server)
	if n >= 0 {
		e, err := policy.New(policy.Config{NetNS: nd.ns})
		must(b, err)
		loadFirstPacket(b, e, n)
		_, err = e.Sync(context.Background())
		must(b, err)
	}
	if !connect(client, server, time.Second) {
		b.Fatalf("%d policies: the client cannot reach the server", n)
	}
	return func() float64 {
		count := 0
		must(b, client.Do(func() error {
			d := dialer(time.Second)
			for end := time.Now().Add(time.Second); time.Now().Before(end); count++ {
				c, err := d.Dial("tcp", server.String())
				if err != nil {
					return err
				}
				c.Close()
			}
			return nil
		}))
		return float64(count)
	}
}

// loadFirstPacket puts the client, the server and, with n > 0, the policy
// selecting both and n-1 others (each with its own local pod) into e.
func loadFirstPacket(b *testing.B, e *policy.Enforcer, n int) {
	must(b, e.UpdateNamespace(policy.Namespace{Name: "bench", Labels: map[string]string{"kubernetes.io/metadata.name": "bench"}}))
	for _, p := range []struct {
		name, role string
		ip         netip.Addr
	}{{"client", "client", clientIP}, {"server", "server", serverIP}} {
		must(b, e.UpdatePod(policy.Pod{Name: policy.Name{Namespace: "bench", Name: p.name}, Labels: map[string]string{"role": p.role},
			IPs: []netip.Addr{p.ip}, Local: true}))
	}
	if n == 0 {
		return
	}
	role := func(v string) *policy.Selector { return &policy.Selector{MatchLabels: map[string]string{"role": v}} }
	port := []policy.Port{{Protocol: policy.TCP, Port: 8080}}
	must(b, e.UpdatePolicy(policy.Policy{Name: policy.Name{Namespace: "bench", Name: "web"},
		PodSelector: policy.Selector{Expressions: []policy.Requirement{{Key: "role", Operator: policy.OpIn, Values: []string{"client", "server"}}}},
		Types:       policy.Ingress | policy.Egress,
		Ingress:     []policy.Rule{{Peers: []policy.Peer{{Pods: role("client")}}, Ports: port}},
		Egress:      []policy.Rule{{Peers: []policy.Peer{{Pods: role("server")}}, Ports: port}}}))
	for i := range n - 1 {
		app := fmt.Sprintf("other-%d", i)
		must(b, e.UpdatePod(policy.Pod{Name: policy.Name{Namespace: "bench", Name: app}, Labels: map[string]string{"app": app},
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 245, byte(i >> 8), byte(i)})}, Local: true}))
		must(b, e.UpdatePolicy(policy.Policy{Name: policy.Name{Namespace: "bench", Name: app},
			PodSelector: policy.Selector{MatchLabels: map[string]string{"app": app}}, Types: policy.Ingress,
			Ingress: []policy.Rule{{Peers: []policy.Peer{{Pods: &policy.Selector{MatchLabels: map[string]string{"app": "client-" + app}}}},
				Ports: []policy.Port{{Protocol: policy.TCP, Port: uint16(1000 + i)}}}}}))
	}
}
