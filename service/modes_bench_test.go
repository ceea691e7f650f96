package service

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/veth"
)

// benchSizes are the Service counts of BenchmarkModes; PODNET_BENCH_SIZES
// (comma-separated) overrides them.
func benchSizes() []int {
	sizes := []int{1000, 10000, 30000}
	if v := os.Getenv("PODNET_BENCH_SIZES"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err == nil && n > 0 {
				sizes = append(sizes, n)
			}
		}
	}
	return sizes
}

var benchModes = []Mode{ModeNftables, ModeIptables}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// kernelMemory returns the kernel's unreclaimable slab plus vmalloc use
// in bytes (/proc/meminfo), where nf_tables keeps rules, sets and
// elements.
func kernelMemory(b *testing.B) int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var total int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && (fs[0] == "SUnreclaim:" || fs[0] == "VmallocUsed:") {
			kb, _ := strconv.ParseInt(fs[1], 10, 64)
			total += kb << 10
		}
	}
	return total
}

// settledMemory returns kernelMemory once four readings 300 ms apart
// differ by less than 2 MiB from each other (namespaces removed earlier
// free their rules asynchronously, in the kernel's netns cleanup work,
// which also takes CPU from whatever is measured meanwhile), or after 60 s.
func settledMemory(b *testing.B) int64 {
	last, stable := kernelMemory(b), 0
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && stable < 3 {
		time.Sleep(300 * time.Millisecond) // sampling interval
		m := kernelMemory(b)
		if d := m - last; d < 2<<20 && d > -2<<20 {
			stable++
		} else {
			stable = 0
		}
		last = m
	}
	return last
}

// BenchmarkModes measures both modes in one run, each in a throwaway
// namespace, at 1k, 10k and 30k Services × 5 endpoints (2000 of them with
// a node port):
//
//   - full: a new Proxy's first Sync;
//   - add, change, delete: one-Service partial syncs (a new Service, one
//     endpoint replaced, the new Service deleted), 10 of each, median;
//   - mem: kernel memory (slab + vmalloc) the tables took;
//
// and, for ModeNftables, the cost a verdict-map layout would pay: one
// more goto element in a vmap reached from the hooked chains, once the
// table holds one such element per Service (design "vmap", median of 10
// commits). Run with -benchtime=1x; bench/service.sh does.
func BenchmarkModes(b *testing.B) {
	for _, n := range benchSizes() {
		for _, mode := range benchModes {
			b.Run(fmt.Sprintf("services=%d/mode=%s", n, mode), func(b *testing.B) {
				for b.Loop() {
					benchMode(b, n, mode)
				}
			})
		}
	}
}

func benchMode(b *testing.B, n int, mode Mode) {
	ctx := context.Background()
	svcs := manyServices(n, 5)
	ns := nstest.New(b)
	p, err := New(Config{Backend: mustBackend(mode, ns), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Replace(svcs); err != nil {
		b.Fatal(err)
	}
	mem0 := settledMemory(b)
	start := time.Now()
	if res, err := p.Sync(ctx); err != nil || !res.Full {
		b.Fatal(res, err)
	}
	full := time.Since(start)
	mem := settledMemory(b) - mem0

	const rounds = 10
	var add, change, del []time.Duration
	sync := func(into *[]time.Duration) {
		start := time.Now()
		res, err := p.Sync(ctx)
		if err != nil || res.Full || res.Services != 1 {
			b.Fatal(res, err)
		}
		*into = append(*into, time.Since(start))
	}
	for i := range rounds {
		s := svcs[(i*7919)%n]
		s.Name.Name = "new-" + strconv.Itoa(i)
		s.ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 97, 0, byte(i)})}
		s.Ports = []Port{{Name: "http", Protocol: TCP, Port: 80, TargetPort: 8080}}
		if err := p.Update(s); err != nil {
			b.Fatal(err)
		}
		sync(&add)
		c := svcs[(i*104729)%n]
		c.Endpoints = slices.Clone(c.Endpoints)
		c.Endpoints[i%5].Addr = netip.AddrFrom4([4]byte{10, 199, byte(i), byte(i >> 8)})
		if err := p.Update(c); err != nil {
			b.Fatal(err)
		}
		sync(&change)
		p.Delete(s.Name)
		sync(&del)
	}
	b.ReportMetric(full.Seconds(), "full-s")
	b.ReportMetric(ms(median(add)), "add-ms")
	b.ReportMetric(ms(median(change)), "change-ms")
	b.ReportMetric(ms(median(del)), "delete-ms")
	b.ReportMetric(float64(mem)/(1<<20), "mem-MiB")
	line := fmt.Sprintf("%s %d services × 5 endpoints: full sync %.2f s; partial sync median add %.1f ms, change %.1f ms, delete %.1f ms; kernel memory %.0f MiB",
		mode, n, full.Seconds(), ms(median(add)), ms(median(change)), ms(median(del)), float64(mem)/(1<<20))
	if mode == ModeNftables {
		vm := vmapDesign(b, p, svcs)
		b.ReportMetric(ms(vm), "vmap-add-ms")
		line += fmt.Sprintf("; vmap design: one goto element %.1f ms", ms(vm))
	}
	b.Log(line)
	// The namespace goes with the benchmark. In iptables mode at 30k
	// Cleanup (one restore of 180k -F/-X lines) would take minutes; the
	// next benchmark waits for the teardown instead (settledMemory).
	if mode == ModeNftables || n <= 10000 {
		if err := p.Cleanup(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// vmapDesign fills ip-affinity, a verdict map the hooked chains look up,
// with one goto element per Service (what a "KEY vmap @services" layout
// holds), then times commits that add one element more: the validation a
// partial sync of that layout pays.
func vmapDesign(b *testing.B, p *Proxy, svcs []Service) time.Duration {
	np := p.pl.(*nftPlane)
	c, err := np.connect()
	if err != nil {
		b.Fatal(err)
	}
	ff := np.fams[podnet.IPv4]
	set := ff.sets["ip-affinity"]
	target := "ip-entries-probe"
	c.AddChain(&nftables.Chain{Name: target, Table: ff.table})
	c.AddRule(&nftables.Rule{Table: ff.table, Chain: &nftables.Chain{Name: target, Table: ff.table}, Exprs: ff.shapeRule(nftShape{nftKinds[0], 5})})
	var es []nftables.SetElement
	for i := range svcs {
		es = append(es, nftables.SetElement{Key: []byte(ipKey(netip.AddrFrom4([4]byte{10, 98, byte(i >> 8), byte(i)}), TCP, 80)), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: target}})
	}
	if err := nft.Chunked(set, es, c.SetAddElements); err != nil {
		b.Fatal(err)
	}
	if err := np.flush(c); err != nil {
		b.Fatal(err)
	}
	var ds []time.Duration
	for i := range 10 {
		e := nftables.SetElement{Key: []byte(ipKey(netip.AddrFrom4([4]byte{10, 99, 0, byte(i)}), TCP, 80)), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: target}}
		start := time.Now()
		if err := c.SetAddElements(set, []nftables.SetElement{e}); err != nil {
			b.Fatal(err)
		}
		if err := np.flush(c); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	return median(ds)
}

// BenchmarkFirstPacket measures new TCP connections per second from a
// client namespace through the node's rules to one Service's endpoint,
// with 100 and with 10k Services in the tables, for both modes. The two
// sizes are set up side by side (a node each) and measured in alternating
// one-second samples, 7 each, so that the machine's drift cancels out of
// their ratio; the figures are medians. A third node has 10k Services
// with 1 to 64 endpoints (64 distinct counts, so in ModeNftables 64 set
// lookups before the measured Service's, whose count is met last). The Service measured sorts last,
// so in ModeIptables its rule is the last one of PODNET-SERVICES. The
// client resets each connection (SO_LINGER 0) so no TIME_WAIT builds up.
func BenchmarkFirstPacket(b *testing.B) {
	for _, mode := range benchModes {
		b.Run(fmt.Sprintf("mode=%s", mode), func(b *testing.B) {
			for b.Loop() {
				settledMemory(b) // earlier benchmarks' namespaces are gone
				small, large, varied := firstPacketNode(b, mode, 100, 5), firstPacketNode(b, mode, 10000, 5), firstPacketNode(b, mode, 10000, 64)
				var rs, rl, rv []float64
				for range 7 {
					rs = append(rs, small())
					rl = append(rl, large())
					rv = append(rv, varied())
				}
				for _, r := range [][]float64{rs, rl, rv} {
					slices.Sort(r)
				}
				s, l, v := rs[len(rs)/2], rl[len(rl)/2], rv[len(rv)/2]
				b.ReportMetric(s, "conn/s@100")
				b.ReportMetric(l, "conn/s@10k")
				b.ReportMetric(v, "conn/s@10k-64counts")
				b.ReportMetric(l/s, "10k/100")
				b.Logf("%s: %.0f new connections/s with 100 Services, %.0f with 10k (%.2f×), %.0f with 10k of 1–64 endpoints (%.2f×)", mode, s, l, l/s, v, v/s)
			}
		})
	}
}

// firstPacketNode sets up a node with n Services of 5 endpoints (of 1 to
// maxEps endpoints, in turn, when maxEps is not 5), a client and the
// measured Service with one endpoint, and returns a function that counts
// the connections the client makes through it in one second.
func firstPacketNode(b *testing.B, mode Mode, n, maxEps int) func() float64 {
	ctx := context.Background()
	node, client, server := nstest.New(b), nstest.New(b), nstest.New(b)
	for _, l := range []struct {
		peer             *netns.NS
		name, host       string
		hostIP, podIP, g string
	}{{client, "vc", "eth0", "10.200.0.1/32", "10.200.0.9/32", "10.200.0.1"}, {server, "vs", "eth0", "10.200.1.1/32", "10.200.1.2/32", "10.200.1.1"}} {
		if _, err := veth.Create(node, veth.Spec{Name: l.name, PeerName: l.host, PeerNS: l.peer}); err != nil {
			b.Fatal(err)
		}
		must(b, addr.Ensure(node, l.name, netip.MustParsePrefix(l.hostIP)))
		must(b, addr.Ensure(l.peer, l.host, netip.MustParsePrefix(l.podIP)))
		must(b, route.Ensure(l.peer, route.Route{Dst: netip.MustParsePrefix(l.g + "/32"), Dev: l.host}))
		must(b, route.EnsureDefault(l.peer, netip.MustParseAddr(l.g), l.host))
		must(b, route.Ensure(node, route.Route{Dst: netip.MustParsePrefix(l.podIP), Dev: l.name}))
	}
	must(b, route.SetForwarding(node, 4, true))
	var ln net.Listener
	must(b, server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "10.200.1.2:8080")
		return err
	}))
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	svcs := manyServices(n-1, 5)
	if maxEps != 5 {
		// Counts 2..maxEps first, so that the target's count (1) comes
		// last among the shapes.
		for i := range svcs {
			svcs[i].Endpoints = manyServices(1, 2+i%(maxEps-1))[0].Endpoints
			for j := range svcs[i].Endpoints {
				svcs[i].Endpoints[j].Addr = netip.AddrFrom4([4]byte{10, byte(100 + j), byte(i >> 8), byte(i)})
			}
		}
	}
	svcs = append(svcs, Service{Name: Name{"zz", "target"}, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.255.254")},
		Ports:     []Port{{Name: "http", Protocol: TCP, Port: 80, TargetPort: 8080}},
		Endpoints: []Endpoint{{Addr: netip.MustParseAddr("10.200.1.2"), Ready: true, Serving: true, NodeName: "node0"}}})
	p, err := New(Config{Backend: mustBackend(mode, node), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
	must(b, err)
	must(b, p.Replace(svcs))
	if _, err := p.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	return func() float64 {
		count := 0
		must(b, client.Do(func() error {
			d := net.Dialer{Timeout: time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
				return rc.Control(func(fd uintptr) {
					syscall.SetsockoptLinger(int(fd), syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
				})
			}}
			end := time.Now().Add(time.Second)
			for time.Now().Before(end) {
				c, err := d.Dial("tcp", "10.96.255.254:80")
				if err != nil {
					return err
				}
				c.Close()
				count++
			}
			return nil
		}))
		return float64(count)
	}
}
