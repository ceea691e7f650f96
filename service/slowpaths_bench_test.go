package service

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/netns/nstest"
)

// BenchmarkSlowPaths measures, for both modes in one run, the syncs that
// BenchmarkModes' warm one-Service changes do not cover, at 10k Services
// × 5 endpoints (PODNET_BENCH_SIZES overrides):
//
//   - restart-s: a new Proxy's full sync into a kernel that already holds
//     the tables (a restarted proxy; the repair after tampering);
//   - newcount-ms: a partial sync that gives one Service an endpoint count
//     no Service had (nftables adds a set and a rule), median of 5;
//   - affinity-ms: a partial sync that turns ClientIP affinity on for one
//     Service, median of 5;
//   - bulk1000-ms: one sync changing an endpoint of 1000 Services (a
//     rolling deployment), median of 3;
//   - verify-ms: Proxy.Verify, reading the tables back, median of 3;
//   - udp100k-ms: a partial sync removing an endpoint of a UDP Service,
//     including its conntrack cleanup, with 100k flows in the table.
//
// Run with -benchtime=1x; bench/service.sh does.
func BenchmarkSlowPaths(b *testing.B) {
	sizes := benchSizes()
	if len(sizes) == 3 { // the default of BenchmarkModes: 10k only here
		sizes = []int{10000}
	}
	for _, n := range sizes {
		for _, mode := range benchModes {
			b.Run(fmt.Sprintf("services=%d/mode=%s", n, mode), func(b *testing.B) {
				for b.Loop() {
					benchSlowPaths(b, n, mode)
				}
			})
		}
	}
}

func benchSlowPaths(b *testing.B, n int, mode Mode) {
	ctx := context.Background()
	ns := nstest.New(b)
	svcs := manyServices(n, 5)
	cfg := Config{Backend: mustBackend(mode, ns), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}}
	loadedProxy(b, cfg, svcs)
	p, err := New(cfg) // restarted: the kernel holds the first one's tables
	must(b, err)
	must(b, p.Replace(svcs))
	restart := timeSync(b, p, true)
	var newCount, affinity, bulk, verify []time.Duration
	for i := range 5 {
		s := svcs[(i*7919)%n]
		for j := range 6 + i { // 6…10 endpoints: counts no Service has
			s.Endpoints = append(s.Endpoints, Endpoint{Addr: netip.AddrFrom4([4]byte{10, 190, byte(i), byte(j)}), Ready: true, Serving: true, NodeName: "node0"})
		}
		must(b, p.Update(s))
		newCount = append(newCount, timeSync(b, p, false))
		a := svcs[(i*104729+1)%n]
		a.Affinity = AffinityClientIP
		must(b, p.Update(a))
		affinity = append(affinity, timeSync(b, p, false))
	}
	for i := range 3 {
		for k := range 1000 {
			s := svcs[(k*9973+i*1000)%n]
			s.Endpoints = slices.Clone(s.Endpoints)
			s.Endpoints[0].Addr = netip.AddrFrom4([4]byte{10, 191 + byte(i), byte(k >> 8), byte(k)})
			must(b, p.Update(s))
		}
		bulk = append(bulk, timeSync(b, p, false))
		start := time.Now()
		if ok, err := p.Verify(ctx); !ok || err != nil {
			b.Fatal("Verify after a sync:", ok, err)
		}
		verify = append(verify, time.Since(start))
	}
	udp, flows := benchUDPCleanup(b, p, ns)
	b.ReportMetric(restart.Seconds(), "restart-s")
	b.ReportMetric(ms(median(newCount)), "newcount-ms")
	b.ReportMetric(ms(median(affinity)), "affinity-ms")
	b.ReportMetric(ms(median(bulk)), "bulk1000-ms")
	b.ReportMetric(ms(median(verify)), "verify-ms")
	b.ReportMetric(ms(udp), "udp100k-ms")
	b.Logf("%s %d services: restart full sync %.2f s; new endpoint count %.1f ms; affinity on %.1f ms; 1000 Services in one sync %.1f ms; Verify %.1f ms; UDP endpoint removal with %d flows %.1f ms",
		mode, n, restart.Seconds(), ms(median(newCount)), ms(median(affinity)), ms(median(bulk)), ms(median(verify)), flows, ms(udp))
	if mode == ModeNftables || n <= 10000 {
		must(b, p.Cleanup(ctx))
	}
}

// loadedProxy returns a Proxy of cfg holding svcs, synced once.
func loadedProxy(b *testing.B, cfg Config, svcs []Service) *Proxy {
	p, err := New(cfg)
	must(b, err)
	must(b, p.Replace(svcs))
	timeSync(b, p, true)
	return p
}

// timeSync syncs p, checks it was full or partial as told, and returns
// how long it took.
func timeSync(b *testing.B, p *Proxy, full bool) time.Duration {
	start := time.Now()
	res, err := p.Sync(context.Background())
	if err != nil || res.Full != full {
		b.Fatal(res, err)
	}
	return time.Since(start)
}

// benchUDPCleanup fills the conntrack table of ns with 100k UDP flows to
// other destinations, plus 100 to a UDP Service whose replies come from
// the endpoint about to go, then times the partial sync that removes the
// endpoint and deletes those 100 flows. It returns the time and the flows
// the table held.
func benchUDPCleanup(b *testing.B, p *Proxy, ns *netns.NS) (time.Duration, int) {
	dns := svc("dns", "10.97.255.10", UDP, 53, nil)
	for i := range 2 {
		dns.Endpoints = append(dns.Endpoints, Endpoint{Addr: netip.AddrFrom4([4]byte{10, 200, 255, byte(10 + i)}), Ready: true, Serving: true, NodeName: "node0"})
	}
	must(b, p.Update(dns))
	timeSync(b, p, false)
	c, err := ct.Dial(&netlink.Config{NetNS: ns.Fd()})
	must(b, err)
	defer c.Close()
	gone := dns.Endpoints[0].Addr
	flows := 0
	add := func(src, dst, replySrc netip.Addr, sport uint16) {
		f := ct.NewFlow(unix.IPPROTO_UDP, 0, src, dst, sport, 53, 120, 0)
		f.TupleReply.IP.SourceAddress = replySrc
		must(b, c.Create(f))
		flows++
	}
	for i := range 100_000 {
		src := netip.AddrFrom4([4]byte{10, 201, byte(i >> 8), byte(i)})
		add(src, netip.AddrFrom4([4]byte{10, 202, 0, 1}), netip.AddrFrom4([4]byte{10, 202, 0, 1}), uint16(1024+i%60000))
	}
	for i := range 100 {
		add(netip.AddrFrom4([4]byte{10, 203, 0, byte(i)}), dns.ClusterIPs[0], gone, 40000)
	}
	dns.Endpoints = dns.Endpoints[1:]
	must(b, p.Update(dns))
	start := time.Now()
	res, err := p.Sync(context.Background())
	if err != nil || res.Full || res.Flows != 100 {
		b.Fatalf("UDP endpoint removal: %+v %v, want 100 flows deleted", res, err)
	}
	return time.Since(start), flows
}
