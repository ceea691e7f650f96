// Command podnet-service-proxy keeps the Service rules of a node — native
// nftables tables, or kube-proxy-style iptables rules — for the Services
// and EndpointSlices of a Kubernetes API server, or of manifests on disk.
//
//	podnet-service-proxy --kubeconfig FILE [--node-name node0] [--cluster-cidr 10.200.0.0/16] [--netns /var/run/netns/node0] [--backend nftables|iptables]
//	podnet-service-proxy --manifests DIR --node-name node0 --cluster-cidr 10.200.0.0/16
//
// Exactly one source: --kubeconfig (or, with neither flag, the in-cluster
// configuration of a pod) follows v1 Services and discovery.k8s.io/v1
// EndpointSlices through client-go informers, and this node's v1 Node,
// whose spec.podCIDRs serve as the cluster CIDR when --cluster-cidr is
// not given; --manifests reads the same objects from a file or a
// directory (multi-document YAML or JSON) and re-reads them when they
// change. Changes are written by partial syncs at most one per
// --min-sync-period; every --sync-period a sync checks the canary chain
// and rewrites everything if the tables were flushed. While the API server
// is away, or a manifest is bad, the last good rules stay. Stopping the
// proxy leaves the rules in place (established connections keep working);
// --cleanup removes them.
//
// --backend chooses the rules: nftables (one table per family, named after
// --chain-prefix: podnet-proxy) or iptables (kube-proxy's chains). By
// default it is nftables where the kernel supports it and iptables
// otherwise; the choice is logged. At start the proxy removes what the
// other backend left with the same prefix, so switching backends leaves no
// stale rules; --cleanup removes both.
//
// --metrics-addr serves /metrics (kube-proxy's metric names where they
// mean the same), /healthz (503 once a change has waited more than twice
// --sync-period) and /livez.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/addr"
	"github.com/podnet/podnet/conntrack"
	"github.com/podnet/podnet/daemon"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/link"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/service"
)

type options struct {
	manifests     string
	kubeconfig    string
	nodeName      string
	clusterCIDR   string
	serviceCIDR   string
	nodePortCIDRs string
	prefix        string
	netnsPath     string
	once          bool
	cleanup       bool
	metricsAddr   string
	healthzAddr   string
	syncPeriod    time.Duration
	minSyncPeriod time.Duration
	poll          time.Duration
	backend       string
	conntrack     conntrack.TCPTimeouts
	conntrackOnly bool
}

func main() {
	var o options
	host, _ := os.Hostname()
	flag.StringVar(&o.manifests, "manifests", "", "file or directory of Service and EndpointSlice manifests (YAML or JSON)")
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "follow the API server of this kubeconfig file")
	flag.StringVar(&o.nodeName, "node-name", host, "this node's name, for traffic policy Local and its Node object")
	flag.StringVar(&o.clusterCIDR, "cluster-cidr", "", "pod network(s), comma-separated; traffic to cluster IPs from outside is masqueraded (default with --kubeconfig: the Node's podCIDRs)")
	flag.StringVar(&o.serviceCIDR, "service-cidr", "", "the cluster's service CIDR(s), comma-separated (kube-apiserver's --service-cluster-ip-range): connections to addresses in them that no Service has are dropped (default with an API server: its ServiceCIDR objects)")
	flag.StringVar(&o.nodePortCIDRs, "nodeport-addresses", "", "serve node ports only on this node's addresses within these CIDRs, comma-separated, or \"primary\": the Node object's InternalIPs (kube-proxy's --nodeport-addresses; default: primary with --backend nftables and an API server, else every address but loopback)")
	flag.StringVar(&o.prefix, "chain-prefix", service.DefaultChainPrefix, "chain name prefix; KUBE gives kube-proxy's names")
	flag.StringVar(&o.netnsPath, "netns", "", "program the network namespace at this path instead of the current one")
	flag.BoolVar(&o.once, "once", false, "load the Services, sync once and exit; the rules stay")
	flag.BoolVar(&o.cleanup, "cleanup", false, "remove every rule and chain the proxy owns and exit")
	flag.StringVar(&o.metricsAddr, "metrics-addr", "", "serve /metrics, /proxyMode, /healthz and /livez on this address (kube-proxy's is 127.0.0.1:10249)")
	flag.StringVar(&o.healthzAddr, "healthz-addr", "", "serve /healthz and /livez on this address too (kube-proxy's is 0.0.0.0:10256)")
	flag.DurationVar(&o.syncPeriod, "sync-period", service.DefaultSyncPeriod, "how often to check the canary chain and resync")
	flag.DurationVar(&o.minSyncPeriod, "min-sync-period", time.Second, "least time between two syncs; changes arriving sooner are written together (0: at once)")
	flag.DurationVar(&o.poll, "poll", time.Second, "how often to look for manifest changes")
	flag.DurationVar(&o.conntrack.Established, "conntrack-tcp-timeout-established", 24*time.Hour, "conntrack timeout of established TCP flows, set in the namespace's sysctls at start (kube-proxy's flag and default; 0 leaves it)")
	flag.DurationVar(&o.conntrack.CloseWait, "conntrack-tcp-timeout-close-wait", time.Hour, "conntrack timeout of TCP flows in CLOSE_WAIT, set at start (kube-proxy's flag and default; 0 leaves it)")
	flag.BoolVar(&o.conntrackOnly, "conntrack-only", false, "set the conntrack timeouts and exit: the privileged init step for a proxy that runs with a read-only /proc/sys")
	flag.StringVar(&o.backend, "backend", "", "nftables or iptables (default: nftables where the kernel supports it, else iptables)")
	flag.Parse()
	daemon.Main("podnet-service-proxy", func(ctx context.Context, log *slog.Logger) error { return run(ctx, o, log) })
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	cidrs, err := parseCIDRs(o.clusterCIDR)
	if err != nil {
		return fmt.Errorf("--cluster-cidr: %w", err)
	}
	svcCIDRs, err := parseCIDRs(o.serviceCIDR)
	if err != nil {
		return fmt.Errorf("--service-cidr: %w", err)
	}
	if strings.TrimSpace(o.nodePortCIDRs) == primaryNodePorts && o.manifests != "" {
		return errors.New("--nodeport-addresses primary: the primary addresses come from the Node object in the API server; give --kubeconfig, not --manifests")
	}
	if err := o.conntrack.Validate(); err != nil {
		return err
	}
	ns, err := openNetNS(o.netnsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	if o.cleanup {
		return cleanup(ctx, ns, o, log)
	}
	if err := setConntrack(ns, o.conntrack, o.conntrackOnly, log); err != nil || o.conntrackOnly {
		return err
	}
	mode, err := chooseBackend(ns, o.backend, log)
	if err != nil {
		return err
	}
	src, err := newSource(o, log)
	if err != nil {
		return err
	}
	p, err := newProxy(ctx, ns, o, mode, src, cidrs, svcCIDRs, log)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := removeOther(ctx, ns, o.prefix, mode, log); err != nil {
		return err
	}
	if o.once {
		if err := src.load(ctx, p); err != nil {
			return err
		}
		_, err := p.Sync(ctx)
		return err
	}
	m := newMetrics(p, src, 2*o.syncPeriod)
	stop, err := serveEndpoints(o, m, mode, log)
	if err != nil {
		return err
	}
	defer stop()
	if err := src.start(ctx, p); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	p.Run(ctx, service.RunConfig{MinSyncPeriod: o.minSyncPeriod, SyncPeriod: o.syncPeriod, OnSync: m.observe})
	log.Info("stopping; the rules stay in place")
	return nil
}

// newProxy reads this node's Node object (its podCIDRs when cidrs is
// empty, its primary addresses) and makes the proxy the flags describe.
func newProxy(ctx context.Context, ns *netns.NS, o options, mode service.Mode, src source, cidrs, svcCIDRs []netip.Prefix, log *slog.Logger) (*service.Proxy, error) {
	node, err := src.waitNode(ctx, len(cidrs) == 0)
	if err != nil {
		return nil, err
	}
	if len(cidrs) == 0 {
		cidrs = node.podCIDRs
	}
	be, err := service.NewBackend(mode, ns)
	if err != nil {
		return nil, err
	}
	npList := o.nodePortCIDRs
	if npList == "" && mode == service.ModeNftables && o.manifests == "" {
		npList = primaryNodePorts // kube-proxy's nftables default
	}
	npAddrs, err := nodePortAddresses(ns, npList, families(cidrs), node.ips, log)
	if err != nil {
		return nil, fmt.Errorf("--nodeport-addresses: %w", err)
	}
	return service.New(service.Config{Backend: be, ChainPrefix: o.prefix, NodeName: o.nodeName, ClusterCIDRs: cidrs,
		ServiceCIDRs: svcCIDRs, NodePortAddresses: npAddrs, NodeIPs: ofFamilies(node.ips, families(cidrs)),
		Families: families(cidrs), ServeHealthChecks: true, Logger: log})
}

// serveEndpoints starts the metrics server (with kube-proxy's /proxyMode)
// and the health server the flags ask for; stop closes them.
func serveEndpoints(o options, m *metrics, mode service.Mode, log *slog.Logger) (stop func(), err error) {
	var srvs []*http.Server
	stop = func() {
		for _, s := range srvs {
			s.Close()
		}
	}
	healthz := http.HandlerFunc(m.healthz)
	if o.metricsAddr != "" {
		proxyMode := daemon.Route{Path: "/proxyMode", Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprint(w, mode)
		})}
		srv, err := daemon.ServeMetrics(o.metricsAddr, m.reg, healthz, log, proxyMode)
		if err != nil {
			return stop, err
		}
		srvs = append(srvs, srv)
	}
	if o.healthzAddr != "" {
		srv, err := daemon.ServeHealthz(o.healthzAddr, healthz, log)
		if err != nil {
			stop()
			return stop, err
		}
		srvs = append(srvs, srv)
	}
	return stop, nil
}

// chooseBackend returns the mode the flag names, or by default nftables
// where the kernel supports it.
func chooseBackend(ns *netns.NS, flagValue string, log *slog.Logger) (service.Mode, error) {
	switch service.Mode(flagValue) {
	case service.ModeIptables:
		return service.ModeIptables, nil
	case service.ModeNftables:
		if err := service.NftablesSupported(ns); err != nil {
			return "", fmt.Errorf("--backend nftables: %w", err)
		}
		return service.ModeNftables, nil
	case "":
		if err := service.NftablesSupported(ns); err != nil {
			log.Info("backend iptables: this kernel has no nftables support for the proxy", "err", err)
			return service.ModeIptables, nil
		}
		log.Info("backend nftables (the kernel supports it; --backend iptables for kube-proxy's chains)")
		return service.ModeNftables, nil
	}
	return "", fmt.Errorf("--backend %q: want nftables or iptables", flagValue)
}

// cleanupMode removes everything a proxy of mode and prefix owns, in both
// families.
func cleanupMode(ctx context.Context, ns *netns.NS, prefix string, mode service.Mode) error {
	be, err := service.NewBackend(mode, ns)
	if err != nil {
		return err
	}
	p, err := service.New(service.Config{Backend: be, ChainPrefix: prefix, Families: []podnet.Family{podnet.IPv4, podnet.IPv6}})
	if err != nil {
		return err
	}
	return p.Cleanup(ctx)
}

// removeOther removes what the backend not in use left with the same
// prefix (a proxy that ran with the other backend before).
func removeOther(ctx context.Context, ns *netns.NS, prefix string, mode service.Mode, log *slog.Logger) error {
	other := service.ModeNftables
	if mode == service.ModeNftables {
		other = service.ModeIptables
	} else if service.NftablesSupported(ns) != nil {
		return nil
	}
	if err := cleanupMode(ctx, ns, prefix, other); err != nil {
		return fmt.Errorf("remove the %s backend's rules: %w", other, err)
	}
	log.Debug("removed the other backend's rules", "backend", other)
	return nil
}

func cleanup(ctx context.Context, ns *netns.NS, o options, log *slog.Logger) error {
	if err := cleanupMode(ctx, ns, o.prefix, service.ModeIptables); err != nil {
		return err
	}
	if err := service.NftablesSupported(ns); err == nil {
		if err := cleanupMode(ctx, ns, o.prefix, service.ModeNftables); err != nil {
			return err
		}
	}
	log.Info("removed the proxy's rules (iptables chains and nftables tables)", "netns", ns.String(), "prefix", o.prefix)
	return nil
}

// newSource picks the one source the flags name.
func newSource(o options, log *slog.Logger) (source, error) {
	inCluster := os.Getenv("KUBERNETES_SERVICE_HOST") != ""
	switch {
	case o.manifests != "" && o.kubeconfig != "":
		return nil, errors.New("--manifests and --kubeconfig both given: choose one source")
	case o.manifests != "":
		return &manifestSource{path: o.manifests, poll: o.poll, log: log}, nil
	case o.kubeconfig != "" || inCluster:
		k, err := newKubeSource(o.kubeconfig, o.nodeName, log)
		if err != nil {
			return nil, err
		}
		k.serviceCIDRs = o.serviceCIDR == ""
		return k, nil
	}
	return nil, errors.New("no source: give --kubeconfig or --manifests (or run in a pod for the in-cluster configuration)")
}

// primaryNodePorts is the --nodeport-addresses value that means the
// Node object's primary addresses.
const primaryNodePorts = "primary"

// nodePortAddresses returns the addresses of ns's interfaces, of fams,
// that lie in the comma-separated CIDRs of list; for "primary", those
// that are one of nodeIPs (the Node object's). nil means every address
// serves node ports: list is empty, or it is "primary" and the Node has
// no address (kube-proxy falls back the same way). CIDRs that match no
// address are an error: node ports would be served nowhere. Primary
// addresses that are not local are returned as they are, with a warning.
func nodePortAddresses(ns *netns.NS, list string, fams []podnet.Family, nodeIPs []netip.Addr, log *slog.Logger) ([]netip.Addr, error) {
	var cidrs []netip.Prefix
	primary := strings.TrimSpace(list) == primaryNodePorts
	if primary {
		for _, ip := range ofFamilies(nodeIPs, fams) {
			cidrs = append(cidrs, netip.PrefixFrom(ip, ip.BitLen()))
		}
		if len(cidrs) == 0 {
			log.Warn("node ports on every address: no primary address known (the Node object has none, or there is no API server)")
			return nil, nil
		}
		list = fmt.Sprint(cidrs)
	} else {
		var err error
		if cidrs, err = parseCIDRs(list); err != nil || len(cidrs) == 0 {
			return nil, err
		}
	}
	links, err := link.List(ns)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, l := range links {
		prefixes, err := addr.List(ns, l.Name)
		if err != nil {
			return nil, err
		}
		for _, p := range prefixes {
			a := p.Addr()
			if !a.IsLoopback() && !a.IsLinkLocalUnicast() && slices.Contains(fams, podnet.FamilyOf(a)) &&
				slices.ContainsFunc(cidrs, func(c netip.Prefix) bool { return c.Contains(a) }) {
				out = append(out, a)
			}
		}
	}
	if len(out) == 0 && primary {
		// kube-proxy serves node ports nowhere then; these addresses at
		// least name what the Node object says.
		out = ofFamilies(nodeIPs, fams)
		log.Warn("the Node object's addresses are not on this node's interfaces; node ports answer on them only", "addresses", out)
		return out, nil
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no address of this node lies in %s", list)
	}
	log.Info("node ports on these addresses only", "addresses", out)
	return out, nil
}

// ofFamilies returns the addresses of ips in fams.
func ofFamilies(ips []netip.Addr, fams []podnet.Family) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		if slices.Contains(fams, podnet.FamilyOf(ip)) {
			out = append(out, ip)
		}
	}
	return out
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
