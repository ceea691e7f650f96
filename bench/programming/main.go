// Command programming measures network programming latency through a real
// Kubernetes API server: how long after an EndpointSlice change (its
// endpoints.kubernetes.io/last-change-trigger-time annotation) the rules
// that carry it are in force, as each proxy measures it itself
// (kubeproxy_network_programming_duration_seconds).
//
// For each size it starts etcd and kube-apiserver on loopback (package
// kubetest), creates N Services with one EndpointSlice of E endpoints
// each, and then, for each proxy in turn — podnet-service-proxy with each
// of --podnet-backends and, when --kube-proxy is given, kube-proxy in each
// of its modes — starts it with
// a minimum sync period of 0 in a new throwaway network namespace (whose
// loopback carries its connections to the API server on to it), waits
// for its first full sync, changes U EndpointSlices one by one (one
// endpoint address each) INTERVAL apart, and reads the proxy's metrics:
// latency quantiles, the mean partial sync and its resident memory.
// Everything it starts it stops, and each namespace goes with its proxy.
// Run it through bench/programming.sh.
//
//	programming --proxy bin/podnet-service-proxy [--podnet-backends nftables,iptables] [--kube-proxy .refbin/kube-proxy] [--services 1000,10000] [--endpoints 5] [--updates 200] [--interval 300ms]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/kubetest"
)

type config struct {
	proxy     string
	kubeProxy string // "" skips kube-proxy
	kpModes   []string
	backends  []string
	kpMax     int
	sizes     []int
	endpoints int
	updates   int
	interval  time.Duration
}

func main() {
	var c config
	sizes := flag.String("services", "1000,10000", "comma-separated numbers of Services")
	flag.StringVar(&c.proxy, "proxy", "bin/podnet-service-proxy", "the podnet-service-proxy binary")
	flag.StringVar(&c.kubeProxy, "kube-proxy", "", "also measure this kube-proxy binary in the same run")
	modes := flag.String("kube-proxy-modes", "iptables,nftables", "kube-proxy's modes to measure")
	backends := flag.String("podnet-backends", "nftables,iptables", "podnet-service-proxy's --backend values to measure")
	flag.IntVar(&c.kpMax, "kube-proxy-max-services", 1000, "measure kube-proxy only up to this many Services (its first iptables sync at 10k takes many minutes)")
	flag.IntVar(&c.endpoints, "endpoints", 5, "endpoints per Service")
	flag.IntVar(&c.updates, "updates", 200, "EndpointSlice changes to measure")
	flag.DurationVar(&c.interval, "interval", 300*time.Millisecond, "time between two changes")
	flag.Parse()
	c.kpModes = strings.Split(*modes, ",")
	c.backends = strings.Split(*backends, ",")
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 60000 {
			fmt.Fprintf(os.Stderr, "programming: bad size %q\n", s)
			os.Exit(2)
		}
		c.sizes = append(c.sizes, n)
	}
	// Interrupted, it still stops every proxy and the control plane.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Printf("%-9s %-22s %-8s %-9s %-9s %-9s %-9s %-9s %-9s %-8s\n", "services", "proxy", "load(s)", "first(s)", "p50(ms)", "p90(ms)", "p99(ms)", "mean(ms)", "sync(ms)", "rss(MB)")
	for _, n := range c.sizes {
		if err := size(ctx, c, n); err != nil {
			fmt.Fprintf(os.Stderr, "programming: %d Services: %v\n", n, err)
			stop()
			os.Exit(1)
		}
	}
}

// size measures every proxy at n Services on one control plane.
func size(ctx context.Context, c config, n int) error {
	cp, err := kubetest.Start(ctx, kubetest.Options{ServiceClusterIPRange: "10.96.0.0/16"})
	if err != nil {
		return err
	}
	defer cp.Stop()
	cs, err := cp.Client()
	if err != nil {
		return err
	}
	api, err := url.Parse(cp.Config.Host)
	if err != nil {
		return err
	}
	t := time.Now()
	if err := load(ctx, cs, n, c.endpoints); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	loaded := time.Since(t)
	var runs []proxyKind
	for _, b := range c.backends {
		runs = append(runs, proxyKind{name: "podnet " + b, bin: c.proxy, backend: b})
	}
	if c.kubeProxy != "" && n <= c.kpMax {
		for _, m := range c.kpModes {
			runs = append(runs, proxyKind{name: "kube-proxy " + m, bin: c.kubeProxy, kubeMode: m})
		}
	}
	gens := make([]int, n) // each Service's slice generation, so that a change moves one address
	for _, k := range runs {
		r, err := measure(ctx, c, cs, cp.Kubeconfig, api.Host, n, k, gens)
		if err != nil {
			return fmt.Errorf("%s: %w", k.name, err)
		}
		fmt.Printf("%-9d %-22s %-8.1f %-9.2f %-9s %-9s %-9s %-9.1f %-9.1f %-8.0f\n", n, k.name, loaded.Seconds(), r.first.Seconds(),
			r.q50, r.q90, r.q99, r.mean*1e3, r.partialMean*1e3, r.rssMB)
	}
	return nil
}

type result struct {
	first              time.Duration
	q50, q90, q99      estimate
	mean               float64
	partialMean, rssMB float64
}

// measure runs one proxy through its first sync and the changes.
func measure(ctx context.Context, c config, cs kubeClient, kubeconfig, apiAddr string, n int, k proxyKind, gens []int) (r result, err error) {
	p, err := k.start(kubeconfig, apiAddr)
	if err != nil {
		return r, err
	}
	defer func() { err = errors.Join(err, p.stop()) }()
	t := time.Now()
	if err := p.waitFor(ctx, func(m metrics) bool { return k.synced(m, n) }, 15*time.Minute); err != nil {
		return r, fmt.Errorf("first sync: %w\n%s", err, p.logTail())
	}
	r.first = time.Since(t)
	before, err := p.scrape()
	if err != nil {
		return r, err
	}
	const lat = "kubeproxy_network_programming_duration_seconds"
	for i := range c.updates {
		svc := (i * 7919) % n
		gens[svc]++
		if err := change(ctx, cs, svc, gens[svc], c.endpoints); err != nil {
			return r, err
		}
		select { // the pace of the load, not synchronisation
		case <-time.After(c.interval):
		case <-ctx.Done():
			return r, ctx.Err()
		}
	}
	want := before[lat+"_count"] + float64(c.updates)
	if err := p.waitFor(ctx, func(m metrics) bool { return m[lat+"_count"] >= want }, 5*time.Minute); err != nil {
		return r, fmt.Errorf("changes: %w\n%s", err, p.logTail())
	}
	after, err := p.scrape()
	if err != nil {
		return r, err
	}
	d := delta(before, after)
	r.q50, r.q90, r.q99 = d.quantile(lat, 0.5), d.quantile(lat, 0.9), d.quantile(lat, 0.99)
	if sum, ok := after[`podnet_service_proxy_network_programming_seconds{quantile="0.5"}`]; ok {
		// podnet's own summary has exact quantiles; prefer them to the
		// histogram's interpolation.
		r.q50 = estimate{v: sum}
		r.q90 = estimate{v: after[`podnet_service_proxy_network_programming_seconds{quantile="0.9"}`]}
		r.q99 = estimate{v: after[`podnet_service_proxy_network_programming_seconds{quantile="0.99"}`]}
	}
	if cnt := d[lat+"_count"]; cnt > 0 {
		r.mean = d[lat+"_sum"] / cnt
	}
	const partial = "kubeproxy_sync_partial_proxy_rules_duration_seconds"
	if cnt := d[partial+"_count"]; cnt > 0 {
		r.partialMean = d[partial+"_sum"] / cnt
	} else if cnt := d["kubeproxy_sync_proxy_rules_duration_seconds_count"]; cnt > 0 {
		r.partialMean = d["kubeproxy_sync_proxy_rules_duration_seconds_sum"] / cnt
	}
	r.rssMB = p.rss() / 1024
	return r, nil
}
