// Command podnet-agent is one node's pod network agent: what flannel's
// host-gw backend and ip-masq-agent do, following a Kubernetes API server.
//
//	podnet-agent --kubeconfig FILE --cluster-cidr 10.200.0.0/16 [--node-name node0] [--netns /var/run/netns/node0]
//
// Once this node's Node has spec.podCIDRs it
//
//   - writes DIR/10-podnet.conflist (--cni-conf-dir, atomically, only when
//     it changes): podnet-bridge on --bridge as the pods' gateway, host-local
//     ranges = the podCIDRs (dual-stack with two), ipMasq false, chained
//     with portmap — what a runtime needs to start pods;
//   - routes every other Node's podCIDRs via its InternalIP of the same
//     family (host-gw), under its own routing protocol number
//     (--route-protocol), so routes of deleted Nodes or changed podCIDRs go
//     and nothing else is touched; a Node whose InternalIP is not on a
//     directly connected subnet gets no route and a warning;
//   - masquerades traffic from this node's pods to destinations outside
//     --cluster-cidr and --no-masquerade-cidr (multicast aside), in the
//     iptables backend the node uses (nft or legacy, detected as
//     kube-proxy's iptables-wrapper does, or --iptables-mode);
//   - sets the Node condition NetworkUnavailable=False, reason PodnetReady.
//
// All of it is re-checked after every Node change and every
// --resync-period, so what someone else removed (iptables -F, ip route
// flush, a deleted conflist) comes back, and routes to Nodes deleted while
// the agent was down go when it starts. Until the Node has a podCIDR the
// agent writes nothing, says why and shows it in podnet_agent_waiting_for_pod_cidr.
// Stopping leaves everything in place; --cleanup removes it.
//
//	podnet-agent --install-cni-bin /host/opt/cni/bin /podnet-bridge /podnet-host-local /portmap /loopback
//
// copies the binaries named as arguments into a directory and exits: the
// init step of a DaemonSet whose image has no shell. Each copy is renamed
// over the old file, so a runtime executing the old binary is undisturbed.
//
// With --network-policy (the default) it also enforces the cluster's
// NetworkPolicies on this node's pods: package policy/kube follows Pods,
// Namespaces and NetworkPolicies, and package policy keeps one nftables
// table (inet podnet-policy) in the node's namespace in step, setting
// br_netfilter's bridge-nf-call-iptables there so that traffic between
// two pods of the bridge is filtered too. The table stays when the agent
// stops; --cleanup, or a start with --network-policy=false, removes it.
// With --policy-socket (the DaemonSet's is /run/podnet/policy.sock) it
// also serves podnet-bridge there, mode 0600, and names the socket in the
// conflist as policySocket: a CNI ADD tells the agent the new pod's
// addresses and returns only once the pod's policies are in force, so
// that a new pod is never reachable against policy nor refused by it
// before kubelet reports its address. While the agent is not serving
// (starting, stopped) ADD fails at once and kubelet retries: pods of the
// pod network start only with the agent running. The flag has no default
// because the path is the node's: agents sharing a file system (nodes as
// network namespaces of one machine) each need their own.
//
// --metrics-addr serves /metrics, /healthz (503 after two resync periods
// without a successful reconcile, or with network policy, without the
// table in force) and /livez.
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
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	anpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/podnet/podnet/daemon"
	"github.com/podnet/podnet/iptables"
	"github.com/podnet/podnet/nat"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/policy/cnisock"
	"github.com/podnet/podnet/route"
	"github.com/podnet/podnet/service/kube"
)

type options struct {
	kubeconfig  string
	node        string
	netnsPath   string
	confDir     string
	clusterCIDR string
	noMasq      string
	bridge      string
	ipam        string
	ipamDataDir string
	metricsAddr string
	mode        string
	protocol    uint
	resync      time.Duration
	cleanup     bool
	netpol      bool
	adminPolicy string
	policySock  string
	installBin  string
	args        []string
}

func main() {
	var o options
	host, _ := os.Hostname()
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "follow the API server of this kubeconfig file (default: the in-cluster configuration)")
	flag.StringVar(&o.node, "node-name", host, "this node's Node name")
	flag.StringVar(&o.netnsPath, "netns", "", "act in the network namespace at this path instead of the current one")
	flag.StringVar(&o.confDir, "cni-conf-dir", "/etc/cni/net.d", "directory of the CNI configuration the runtime reads")
	flag.StringVar(&o.clusterCIDR, "cluster-cidr", "", "the cluster's pod network(s), comma-separated: traffic from pods to them is not masqueraded (required)")
	flag.StringVar(&o.noMasq, "no-masquerade-cidr", "", "more destinations never masqueraded, comma-separated (ip-masq-agent's nonMasqueradeCIDRs)")
	flag.StringVar(&o.bridge, "bridge", "cnio0", "the pods' bridge, named in the CNI configuration")
	flag.StringVar(&o.ipam, "ipam", "host-local", "IPAM plugin type in the CNI configuration")
	flag.StringVar(&o.ipamDataDir, "ipam-data-dir", "", "host-local's dataDir in the CNI configuration (default: host-local's own, /var/lib/cni/networks)")
	flag.StringVar(&o.metricsAddr, "metrics-addr", "", "serve /metrics, /healthz and /livez on this address (e.g. 127.0.0.1:10260)")
	flag.StringVar(&o.mode, "iptables-mode", "auto", "iptables backend for the masquerade rules: auto (detect, as iptables-wrapper does), nft or legacy")
	flag.UintVar(&o.protocol, "route-protocol", uint(route.ProtocolPodnet), "routing protocol number the agent's routes carry (ip route ... proto N)")
	flag.DurationVar(&o.resync, "resync-period", 10*time.Second, "how often routes, rules and the CNI configuration are re-checked")
	flag.BoolVar(&o.cleanup, "cleanup", false, "remove the agent's routes, masquerade rules, CNI configuration and network policy table, and exit")
	flag.BoolVar(&o.netpol, "network-policy", true, "enforce NetworkPolicies on this node's pods (nftables table inet podnet-policy); false removes a table left by an earlier run")
	flag.StringVar(&o.adminPolicy, "admin-network-policy", "auto", "with --network-policy, enforce AdminNetworkPolicies and BaselineAdminNetworkPolicies (policy.networking.k8s.io/v1alpha1) too: auto (when the API server serves them at start), true (wait until it does) or false")
	flag.StringVar(&o.policySock, "policy-socket", "", "with --network-policy, serve podnet-bridge on this unix socket (named in the conflist as policySocket; the DaemonSet's is "+cnisock.DefaultPath+"): its ADD returns once the new pod's policies are in force. Without it a new pod is isolated only once the API server has its address")
	flag.StringVar(&o.installBin, "install-cni-bin", "", "copy the files named as arguments into this directory (each renamed over the old one) and exit")
	flag.Parse()
	o.args = flag.Args()
	daemon.Main("podnet-agent", func(ctx context.Context, log *slog.Logger) error { return run(ctx, o, log) })
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	if o.installBin != "" {
		return installCNIBins(o.installBin, o.args, log)
	}
	cfg, err := o.config()
	if err != nil {
		return err
	}
	ns, err := openNetNS(o.netnsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	masq, err := masqBackend(ctx, ns, o.mode, log)
	if err != nil {
		return err
	}
	if o.cleanup {
		if err := cleanupNetworkPolicy(ctx, ns); err != nil {
			return err
		}
		return cleanupNode(ctx, cfg, ns, masq, log)
	}
	if len(cfg.clusterCIDR) == 0 {
		return errors.New("--cluster-cidr is required: traffic to it is not masqueraded")
	}
	rc, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	rc.UserAgent = "podnet-agent"
	kube.LogUnreachable(rc, log, 30*time.Second)
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	m := newMetrics(2 * cfg.resync)
	if o.metricsAddr != "" {
		srv, err := daemon.ServeMetrics(o.metricsAddr, m.reg, http.HandlerFunc(m.healthz), log)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	admin := func(ctx context.Context) (anpclient.Interface, error) {
		return adminClient(ctx, rc, client, o.adminPolicy, log)
	}
	err = runAll(ctx, o.netpol, admin, newAgent(cfg, ns, masq, client, log, m))
	log.Info("stopping; routes, rules, the CNI configuration and network policies stay in place")
	return err
}

// runAll runs the agent and, with netpol, the NetworkPolicy enforcer
// beside it, until ctx is done or one of them fails; without netpol it
// removes a policy table an earlier run left, whose rules would no longer
// follow the API server.
func runAll(ctx context.Context, netpol bool, admin func(context.Context) (anpclient.Interface, error), a *agent) error {
	if !netpol {
		if err := cleanupNetworkPolicy(ctx, a.ns); err != nil {
			return fmt.Errorf("remove the network policy table of an earlier run: %w", err)
		}
		return a.run(ctx)
	}
	a.m.enablePolicy()
	np, err := newNetworkPolicy(a.ns, a.client, admin, a.cfg.node, a.cfg.policySocket, a.m, a.log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 2)
	go func() { errs <- np.run(ctx) }()
	go func() { errs <- a.run(ctx) }()
	err = <-errs // the first to end stops the other
	cancel()
	return errors.Join(err, <-errs)
}

// config checks the flags before anything changes.
func (o options) config() (config, error) {
	c := config{node: o.node, confDir: o.confDir, bridge: o.bridge, ipam: o.ipam, ipamDataDir: o.ipamDataDir, resync: o.resync}
	if o.netpol {
		c.policySocket = o.policySock
	}
	var err error
	if c.clusterCIDR, err = parseCIDRs(o.clusterCIDR); err != nil {
		return c, fmt.Errorf("--cluster-cidr: %w", err)
	}
	if c.noMasq, err = parseCIDRs(o.noMasq); err != nil {
		return c, fmt.Errorf("--no-masquerade-cidr: %w", err)
	}
	switch {
	case o.node == "":
		return c, errors.New("--node-name is empty")
	case o.confDir == "":
		return c, errors.New("--cni-conf-dir is empty")
	case o.resync <= 0:
		return c, errors.New("--resync-period must be positive")
	case o.adminPolicy != "auto" && o.adminPolicy != "true" && o.adminPolicy != "false":
		return c, fmt.Errorf("--admin-network-policy %q: want auto, true or false", o.adminPolicy)
	case c.policySocket != "" && !filepath.IsAbs(c.policySocket):
		return c, fmt.Errorf("--policy-socket %q: want an absolute path", c.policySocket)
	case o.protocol == 0 || o.protocol > 255 || route.Protocol(o.protocol) == route.ProtocolKernel:
		return c, fmt.Errorf("--route-protocol %d: want 1-255, not the kernel's (2)", o.protocol)
	}
	c.protocol = route.Protocol(o.protocol)
	for _, p := range append(c.clusterCIDR, c.noMasq...) {
		if p.Bits() == 0 {
			return c, fmt.Errorf("%s exempts every destination: that is no masquerade at all", p)
		}
	}
	return c, nil
}

// masqBackend returns where the agent masquerades: the iptables of ns in
// the mode asked for, or in the one the node uses.
func masqBackend(ctx context.Context, ns *netns.NS, mode string, log *slog.Logger) (nat.Backend, error) {
	m := iptables.Mode(mode)
	if mode == "auto" {
		var err error
		if m, err = iptables.DetectMode(ctx, ns); err != nil {
			return nil, err
		}
		log.Info("iptables backend detected", "mode", m)
	}
	k, err := iptables.NewKernelMode(ns, m)
	if err != nil {
		return nil, fmt.Errorf("--iptables-mode: %w", err)
	}
	return nat.IPTables(k), nil
}

// parseCIDRs parses a comma-separated list of prefixes; an empty list is
// none.
func parseCIDRs(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func openNetNS(path string) (*netns.NS, error) {
	if path != "" {
		return netns.Open(path)
	}
	return netns.Current()
}
