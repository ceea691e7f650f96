package service

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/internal/execns"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns/nstest"
)

// BenchmarkSync measures, through real iptables-restore in throwaway
// namespaces, at 1k and 10k Services × 5 endpoints:
//
//   - floor: loading the very table a full sync writes with one
//     iptables-restore into an empty namespace, in flush mode — the
//     fastest way iptables-nft loads it — and without any Go work;
//   - full: a new Proxy's first Sync into another empty namespace
//     (rendering, reading the empty tables, the restore);
//   - partial: one Service's endpoints change, then Sync (mean of 20).
//
// It reports full/floor, the target being ≤ 1.3, and the partial sync in
// ms, the target at 10k being ≤ 100 ms. Run with -benchtime=1x.
func BenchmarkSync(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			ctx := context.Background()
			svcs := manyServices(n, 5)
			for b.Loop() {
				// Floor: the same restore input, fed directly.
				text := fullText(b, svcs)
				ns := nstest.New(b)
				start := time.Now()
				if _, err := execns.Output(ctx, ns, strings.NewReader(text), "iptables-restore", "-w"); err != nil {
					b.Fatal(err)
				}
				floor := time.Since(start)

				ns2 := nstest.New(b)
				p, err := New(Config{Backend: mustBackend(ModeIptables, ns2), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
				if err != nil {
					b.Fatal(err)
				}
				if err := p.Replace(svcs); err != nil {
					b.Fatal(err)
				}
				start = time.Now()
				res, err := p.Sync(ctx)
				if err != nil || !res.Full {
					b.Fatal(res, err)
				}
				full := time.Since(start)

				const rounds = 20
				var partial time.Duration
				for i := range rounds {
					s := svcs[(i*7919)%n]
					s.Endpoints = append([]Endpoint(nil), s.Endpoints...)
					s.Endpoints[i%5].Addr = netip.AddrFrom4([4]byte{10, 199, byte(i), byte(i >> 8)})
					if err := p.Update(s); err != nil {
						b.Fatal(err)
					}
					start = time.Now()
					res, err := p.Sync(ctx)
					if err != nil || res.Full || res.Services != 1 {
						b.Fatal(res, err)
					}
					partial += time.Since(start)
				}
				b.ReportMetric(floor.Seconds(), "floor-s")
				b.ReportMetric(full.Seconds(), "full-s")
				b.ReportMetric(full.Seconds()/floor.Seconds(), "full/floor")
				b.ReportMetric(float64(partial.Microseconds())/rounds/1000, "partial-ms")
				b.Logf("%d services × 5 endpoints: %d restore lines; floor %.2fs, full sync %.2fs (%.2f× floor), partial sync %.1f ms",
					n, strings.Count(text, "\n"), floor.Seconds(), full.Seconds(), full.Seconds()/floor.Seconds(), float64(partial.Microseconds())/rounds/1000)
			}
		})
	}
}

// fullText returns the iptables-restore input of a full sync of svcs into
// empty tables.
func fullText(b *testing.B, svcs []Service) string {
	tb := &textBackend{}
	p, err := New(Config{Backend: IPTables(tb), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Replace(svcs); err != nil {
		b.Fatal(err)
	}
	if _, err := p.Sync(context.Background()); err != nil {
		b.Fatal(err)
	}
	return tb.text
}

// textBackend records the restore input of a transaction against empty
// tables instead of applying it (the Fake's model of 60k chains is too
// slow for the 10k benchmark).
type textBackend struct{ text string }

func (tb *textBackend) Run(_ context.Context, tx *iptables.Transaction) (err error) {
	tb.text, err = tx.Text(podnet.IPv4)
	return err
}

func (tb *textBackend) Save(_ context.Context, _ podnet.Family, t iptables.Table) (*iptables.TableRules, error) {
	return &iptables.TableRules{Name: t}, nil
}

func (tb *textBackend) Check(iptables.Chain, iptables.Rule) (bool, error) { return false, nil }

func (tb *textBackend) EnsureRule(context.Context, iptables.Chain, bool, iptables.Rule) error {
	return nil
}

func (tb *textBackend) DeleteRule(context.Context, iptables.Chain, iptables.Rule) error { return nil }
