// Command podnet-service-proxy keeps kube-proxy-style iptables rules for
// the Services and EndpointSlices in Kubernetes manifests on disk.
//
//	podnet-service-proxy --manifests DIR --node-name node0 --cluster-cidr 10.200.0.0/16 [--netns /var/run/netns/node0]
//
// It reads v1 Service and discovery.k8s.io/v1 EndpointSlice objects from a
// file or a directory (multi-document YAML or JSON), syncs the rules (a
// full sync first, then partial ones), re-reads the manifests when they
// change and checks the canary chain every --sync-period. A bad manifest
// is reported with its file and object and the last good rules stay.
// Stopping the proxy leaves the rules in place (established connections
// keep working); --cleanup removes them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/service"
)

type options struct {
	manifests   string
	nodeName    string
	clusterCIDR string
	prefix      string
	netnsPath   string
	once        bool
	cleanup     bool
	metricsAddr string
	syncPeriod  time.Duration
	poll        time.Duration
}

func main() {
	var o options
	host, _ := os.Hostname()
	flag.StringVar(&o.manifests, "manifests", "", "file or directory of Service and EndpointSlice manifests (YAML or JSON)")
	flag.StringVar(&o.nodeName, "node-name", host, "this node's name, for externalTrafficPolicy/internalTrafficPolicy Local")
	flag.StringVar(&o.clusterCIDR, "cluster-cidr", "", "pod network(s), comma-separated; traffic to cluster IPs from outside is masqueraded")
	flag.StringVar(&o.prefix, "chain-prefix", service.DefaultChainPrefix, "chain name prefix; KUBE gives kube-proxy's names")
	flag.StringVar(&o.netnsPath, "netns", "", "program the network namespace at this path instead of the current one")
	flag.BoolVar(&o.once, "once", false, "sync once and exit; the rules stay")
	flag.BoolVar(&o.cleanup, "cleanup", false, "remove every rule and chain the proxy owns and exit")
	flag.StringVar(&o.metricsAddr, "metrics-addr", "", "serve /metrics and /healthz on this address (e.g. 127.0.0.1:9101)")
	flag.DurationVar(&o.syncPeriod, "sync-period", 10*time.Second, "how often to check the canary chain and resync")
	flag.DurationVar(&o.poll, "poll", time.Second, "how often to look for manifest changes")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("podnet-service-proxy", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	if !o.cleanup && o.manifests == "" {
		return errors.New("--manifests is required")
	}
	cidrs, err := parseCIDRs(o.clusterCIDR)
	if err != nil {
		return fmt.Errorf("--cluster-cidr: %w", err)
	}
	ns, err := openNetNS(o.netnsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	p, err := service.New(service.Config{NetNS: ns, ChainPrefix: o.prefix, NodeName: o.nodeName, ClusterCIDRs: cidrs, Families: families(cidrs), Logger: log})
	if err != nil {
		return err
	}
	if o.cleanup {
		if err := p.Cleanup(ctx); err != nil {
			return err
		}
		log.Info("removed the proxy's rules", "netns", ns.String(), "prefix", o.prefix)
		return nil
	}
	s := &syncer{proxy: p, manifests: o.manifests, metrics: newMetrics(), log: log}
	if o.once {
		return s.once(ctx)
	}
	s.start(ctx)
	if o.metricsAddr != "" {
		srv, err := serveMetrics(o.metricsAddr, s.metrics, log)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	s.watch(ctx, o.poll, o.syncPeriod)
	log.Info("stopping; the rules stay in place")
	return nil
}

// parseCIDRs parses a comma-separated list of prefixes; blank entries are
// ignored so that an empty flag means none.
func parseCIDRs(list string) ([]netip.Prefix, error) {
	var cidrs []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		cidrs = append(cidrs, p)
	}
	return cidrs, nil
}

func families(cidrs []netip.Prefix) []iptables.Family {
	fams := []iptables.Family{iptables.IPv4}
	for _, c := range cidrs {
		if c.Addr().Is6() {
			return append(fams, iptables.IPv6)
		}
	}
	return fams
}

func openNetNS(path string) (*netns.NS, error) {
	if path != "" {
		return netns.Open(path)
	}
	return netns.Current()
}

// syncer feeds the manifests to the proxy and records the outcome in the
// metrics.
type syncer struct {
	proxy     *service.Proxy
	manifests string
	metrics   *metrics
	log       *slog.Logger
}

// load hands the manifests' Services to the proxy. A rejected read leaves
// the proxy with the Services it had, so the next sync keeps the last good
// rules.
func (s *syncer) load() error {
	objs, err := readManifests(s.manifests)
	if err == nil {
		var svcs []service.Service
		if svcs, err = objs.toServices(); err == nil {
			err = s.proxy.Replace(svcs)
		}
	}
	if err != nil {
		s.metrics.manifestError()
	}
	return err
}

func (s *syncer) sync(ctx context.Context) error {
	res, err := s.proxy.Sync(ctx)
	svcs, eps := s.proxy.Stats()
	s.metrics.observeSync(res.Duration, res.Rules, res.Full, err, svcs, eps)
	return err
}

// once is --once: any failure is the command's, and a bad manifest writes
// nothing.
func (s *syncer) once(ctx context.Context) error {
	if err := s.load(); err != nil {
		return err
	}
	return s.sync(ctx)
}

// start is the daemon's first load and sync. Neither failure stops it: the
// rules already in the namespace stay, and a later manifest change or
// periodic sync may succeed.
func (s *syncer) start(ctx context.Context) {
	if err := s.load(); err != nil {
		s.log.Error("manifests rejected; keeping the rules in place", "err", err)
	}
	_ = s.sync(ctx) // recorded in the metrics; the periodic sync retries
}

// watch reloads the manifests when their files change and syncs every
// period, so that rules flushed behind the proxy's back come back, until
// ctx is done.
func (s *syncer) watch(ctx context.Context, poll, period time.Duration) {
	stamp, _ := fingerprint(s.manifests)
	pollT := time.NewTicker(poll)
	defer pollT.Stop()
	syncT := time.NewTicker(period)
	defer syncT.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-pollT.C:
			stamp = s.reloadIfChanged(ctx, stamp)
		case <-syncT.C:
			s.syncOrLog(ctx)
		}
	}
}

// reloadIfChanged loads and syncs the manifests if their fingerprint is no
// longer stamp, and returns the fingerprint to compare with next. When the
// files cannot be listed the old stamp is kept, so the change is still
// seen once they can.
func (s *syncer) reloadIfChanged(ctx context.Context, stamp string) string {
	cur, err := fingerprint(s.manifests)
	if err != nil || cur == stamp {
		return stamp
	}
	if err := s.load(); err != nil {
		s.log.Error("manifests rejected; keeping the last good rules", "err", err)
		return cur
	}
	s.syncOrLog(ctx)
	return cur
}

func (s *syncer) syncOrLog(ctx context.Context) {
	if err := s.sync(ctx); err != nil {
		s.log.Error("sync failed", "err", err)
	}
}

// serveMetrics serves /metrics and /healthz on addr until the returned
// server is closed. It listens before returning so that a bad or busy
// address fails the command.
func serveMetrics(addr string, m *metrics, log *slog.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m)
	mux.HandleFunc("/healthz", m.healthz)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	log.Info("serving metrics", "addr", l.Addr().String())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	return srv, nil
}
