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
	var cidrs []netip.Prefix
	for _, s := range strings.Split(o.clusterCIDR, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("--cluster-cidr: %w", err)
		}
		cidrs = append(cidrs, p)
	}
	fams := []iptables.Family{iptables.IPv4}
	for _, c := range cidrs {
		if c.Addr().Is6() {
			fams = append(fams, iptables.IPv6)
			break
		}
	}
	var ns *netns.NS
	var err error
	if o.netnsPath != "" {
		ns, err = netns.Open(o.netnsPath)
	} else {
		ns, err = netns.Current()
	}
	if err != nil {
		return err
	}
	defer ns.Close()
	p, err := service.New(service.Config{NetNS: ns, ChainPrefix: o.prefix, NodeName: o.nodeName, ClusterCIDRs: cidrs, Families: fams, Logger: log})
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
	m := newMetrics()
	load := func() error {
		objs, err := readManifests(o.manifests)
		if err == nil {
			var svcs []service.Service
			if svcs, err = objs.toServices(); err == nil {
				err = p.Replace(svcs)
			}
		}
		if err != nil {
			m.manifestError()
			return err
		}
		return nil
	}
	sync := func() error {
		res, err := p.Sync(ctx)
		svcs, eps := p.Stats()
		m.observeSync(res.Duration, res.Rules, res.Full, err, svcs, eps)
		return err
	}
	if err := load(); err != nil {
		if o.once {
			return err
		}
		log.Error("manifests rejected; keeping the rules in place", "err", err)
	}
	if err := sync(); err != nil && o.once {
		return err
	}
	if o.once {
		return nil
	}
	if o.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", m)
		mux.HandleFunc("/healthz", m.healthz)
		l, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return err
		}
		log.Info("serving metrics", "addr", l.Addr().String())
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(l)
		defer srv.Close()
	}
	stamp, _ := fingerprint(o.manifests)
	pollT := time.NewTicker(o.poll)
	defer pollT.Stop()
	syncT := time.NewTicker(o.syncPeriod)
	defer syncT.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping; the rules stay in place")
			return nil
		case <-pollT.C:
			s, err := fingerprint(o.manifests)
			if err != nil || s == stamp {
				continue
			}
			stamp = s
			if err := load(); err != nil {
				log.Error("manifests rejected; keeping the last good rules", "err", err)
				continue
			}
			if err := sync(); err != nil {
				log.Error("sync failed", "err", err)
			}
		case <-syncT.C:
			if err := sync(); err != nil {
				log.Error("sync failed", "err", err)
			}
		}
	}
}

// fingerprint summarises the manifest files' names, sizes and times.
func fingerprint(path string) (string, error) {
	files, err := manifestFiles(path)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s %d %d\n", f, st.Size(), st.ModTime().UnixNano())
	}
	return b.String(), nil
}
