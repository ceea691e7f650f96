package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/podnet/podnet/nat"
	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/route"
)

// ReadyReason is the reason of the NetworkUnavailable=False condition the
// agent sets on its Node once routes and masquerade are in place.
const ReadyReason = "PodnetReady"

// MasqueradeNetwork names the agent's masquerade rule set (its chain is
// PODNET-MASQ-… and its jumps carry this name in their comment).
const MasqueradeNetwork = "podnet-agent"

// config is what the agent needs, checked by main.
type config struct {
	node        string
	confDir     string
	bridge      string
	ipam        string
	ipamDataDir string
	// policySocket is where the NetworkPolicy enforcer serves
	// podnet-bridge; "" without one.
	policySocket string
	clusterCIDR  []netip.Prefix
	noMasq       []netip.Prefix
	protocol     route.Protocol
	resync       time.Duration
}

// agent keeps one node's pod network in step with the API server's Nodes.
type agent struct {
	cfg    config
	ns     *netns.NS
	masqIn nat.Backend // the node's iptables, in its mode
	client kubernetes.Interface
	nodes  corelisters.NodeLister
	log    *slog.Logger
	m      *metrics
	kick   chan struct{} // 1-buffered: a Node changed

	mu     sync.Mutex
	warned map[string]string // what was last logged about a Node, so warnings repeat only when they change
	state  string            // what was last logged about this node's readiness
}

func newAgent(cfg config, ns *netns.NS, masqIn nat.Backend, client kubernetes.Interface, log *slog.Logger, m *metrics) *agent {
	return &agent{cfg: cfg, ns: ns, masqIn: masqIn, client: client, log: log, m: m, kick: make(chan struct{}, 1), warned: map[string]string{}}
}

// run watches every Node and reconciles after each change and every
// resync period until ctx is done. It waits, logging, until the Node
// cache is synced; while the API server is away it goes on reconciling
// from the cache, so what someone else removes still comes back.
func (a *agent) run(ctx context.Context) error {
	f := informers.NewSharedInformerFactory(a.client, 0)
	inf := f.Core().V1().Nodes().Informer()
	a.nodes = f.Core().V1().Nodes().Lister()
	poke := func(any) {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
	update := func(old, n any) {
		if a.nodeKey(old) != a.nodeKey(n) {
			poke(n)
		}
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: update, DeleteFunc: poke})
	if err != nil {
		return err
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	a.log.Info("listing Nodes", "node", a.cfg.node)
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		return nil // ctx done
	}
	a.log.Info("Nodes listed; reconciling", "resync_period", a.cfg.resync)
	tick := time.NewTicker(a.cfg.resync)
	defer tick.Stop()
	for {
		a.reconcileOnce(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-a.kick:
		case <-tick.C:
		}
	}
}

// nodeKey is what a reconcile reads of a Node: its podCIDRs and addresses,
// and for this node its NetworkUnavailable condition. Updates that leave
// it alone (kubelet's status heartbeats, labels) cause no reconcile; the
// periodic one still runs.
func (a *agent) nodeKey(obj any) string {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return ""
	}
	key := fmt.Sprint(n.Name, n.Spec.PodCIDR, n.Spec.PodCIDRs, n.Status.Addresses)
	if n.Name == a.cfg.node {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeNetworkUnavailable {
				key += fmt.Sprint(c.Status, c.Reason)
			}
		}
	}
	return key
}

func (a *agent) reconcileOnce(ctx context.Context) {
	start := time.Now()
	r, err := a.reconcile(ctx)
	if ctx.Err() != nil {
		return
	}
	a.m.observe(start, r, err)
	if err != nil {
		a.log.Error("reconcile failed; retrying at the next change or resync", "err", err)
	}
}

// result is what one reconcile found and did.
type result struct {
	ready    bool // podCIDRs known, routes and masquerade in place
	routes   int  // routes to other nodes' pods
	skipped  int  // other nodes' podCIDRs without a usable route
	repaired []string
}

// reconcile makes the conflist, routes, masquerade rules and Node
// condition what the cached Nodes call for.
func (a *agent) reconcile(ctx context.Context) (result, error) {
	var res result
	self, err := a.nodes.Get(a.cfg.node)
	if apierrors.IsNotFound(err) {
		a.setState("waiting for this node's Node object", "node", a.cfg.node)
		return res, nil
	} else if err != nil {
		return res, err
	}
	podCIDRs, err := parsePodCIDRs(self)
	if err != nil {
		a.setState("this node's podCIDRs are invalid; writing nothing", "node", a.cfg.node, "err", err)
		return res, nil
	}
	if len(podCIDRs) == 0 {
		a.setState("this node has no podCIDR yet (spec.podCIDRs); writing no CNI configuration", "node", a.cfg.node)
		return res, nil
	}

	for _, fam := range familiesOf(podCIDRs) {
		if err := route.SetForwarding(a.ns, fam, true); err != nil {
			return res, err
		}
	}
	routes, skipped, err := a.desiredRoutes(podCIDRs)
	if err != nil {
		return res, err
	}
	res.routes, res.skipped = len(routes), skipped
	sr, err := route.Sync(a.ns, a.cfg.protocol, routes)
	if err != nil {
		return res, err
	}
	if len(sr.Added)+len(sr.Removed) > 0 {
		res.repaired = append(res.repaired, "routes")
		a.log.Info("routes synced", "added", routeList(sr.Added), "removed", routeList(sr.Removed))
	}

	masq := a.masquerade(podCIDRs)
	if err := masq.Check(ctx, a.masqIn); err != nil {
		if !errors.Is(err, nat.ErrNotFound) {
			return res, err
		}
		if err := masq.Ensure(ctx, a.masqIn); err != nil {
			return res, err
		}
		res.repaired = append(res.repaired, "masquerade")
		a.log.Info("masquerade rules written", "subnets", podCIDRs, "exempt", masq.Exempt, "why", err)
	}

	data, err := conflist(conflistSpec{Bridge: a.cfg.bridge, PodCIDRs: podCIDRs, IPAM: a.cfg.ipam, DataDir: a.cfg.ipamDataDir, PolicySocket: a.cfg.policySocket})
	if err != nil {
		return res, err
	}
	path := filepath.Join(a.cfg.confDir, ConflistName)
	if wrote, err := writeIfChanged(path, data); err != nil {
		return res, err
	} else if wrote {
		res.repaired = append(res.repaired, "conflist")
		a.log.Info("CNI configuration written", "path", path, "podCIDRs", podCIDRs)
	}

	if err := a.markReady(ctx, self); err != nil {
		return res, err
	}
	res.ready = true
	a.setState("ready", "node", a.cfg.node, "podCIDRs", podCIDRs, "routes", len(routes))
	return res, nil
}

// desiredRoutes returns a route to each podCIDR of every other Node via
// its InternalIP of the same family (host-gw), and how many podCIDRs got
// none: no InternalIP of that family, or one not on a directly connected
// subnet (host-gw needs the nodes on one L2 segment).
func (a *agent) desiredRoutes(own []netip.Prefix) ([]route.Route, int, error) {
	nodes, err := a.nodes.List(labels.Everything())
	if err != nil {
		return nil, 0, err
	}
	connected, err := route.List(a.ns, route.Filter{})
	if err != nil {
		return nil, 0, err
	}
	slices.SortFunc(nodes, func(x, y *corev1.Node) int { return strings.Compare(x.Name, y.Name) })
	var out []route.Route
	skipped := 0
	seen := map[string]bool{}
	for _, n := range nodes {
		if n.Name == a.cfg.node {
			continue
		}
		seen[n.Name] = true
		cidrs, err := parsePodCIDRs(n)
		if err != nil {
			a.warn(n.Name, "Node has invalid podCIDRs; no route to its pods", "err", err)
			skipped++
			continue
		}
		var why []string
		for _, c := range cidrs {
			gw, ok := internalIP(n, c.Addr().Is4())
			switch {
			case !ok:
				why = append(why, fmt.Sprintf("%s: no %s InternalIP", c, familyName(c)))
			case !onLink(connected, gw):
				why = append(why, fmt.Sprintf("%s: InternalIP %s is not on a directly connected subnet (host-gw needs L2 adjacency)", c, gw))
			case overlaps(c, own):
				why = append(why, fmt.Sprintf("%s overlaps this node's podCIDRs", c))
			default:
				out = append(out, route.Route{Dst: c.Masked(), Gateway: gw})
				continue
			}
			skipped++
		}
		if len(why) > 0 {
			a.warn(n.Name, "no route to some of a Node's pods", "reasons", strings.Join(why, "; "))
		} else {
			a.warn(n.Name, "")
		}
	}
	a.forgetWarnings(seen)
	return out, skipped, nil
}

// masquerade is flannel's --ip-masq rule set: traffic from this node's
// pods to anywhere outside the cluster CIDR (and the --no-masquerade-cidr
// destinations, and multicast) leaves with the node's address.
func (a *agent) masquerade(podCIDRs []netip.Prefix) nat.NetworkMasquerade {
	return nat.NetworkMasquerade{Network: MasqueradeNetwork, Subnets: podCIDRs,
		Exempt: slices.Concat(a.cfg.clusterCIDR, a.cfg.noMasq), RandomFully: true}
}

// markReady sets NetworkUnavailable=False with ReadyReason on the Node,
// unless the cached Node already has it.
//
// Equivalent to: kubectl patch node NAME --subresource status --type strategic -p '{"status":{"conditions":[...]}}'
func (a *agent) markReady(ctx context.Context, n *corev1.Node) error {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse && c.Reason == ReadyReason {
			return nil
		}
	}
	now := metav1.NewTime(time.Now())
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: ReadyReason,
		Message: "podnet-agent has set up routes and masquerade", LastTransitionTime: now, LastHeartbeatTime: now,
	}}}})
	if err != nil {
		return err
	}
	if _, err := a.client.CoreV1().Nodes().PatchStatus(ctx, n.Name, patch); err != nil {
		return fmt.Errorf("set NetworkUnavailable=False on Node %s: %w", n.Name, err)
	}
	a.log.Info("Node condition NetworkUnavailable=False set", "node", n.Name, "reason", ReadyReason)
	return nil
}

// cleanupNode removes the agent's routes, masquerade rules and conflist.
func cleanupNode(ctx context.Context, cfg config, ns *netns.NS, masqIn nat.Backend, log *slog.Logger) error {
	sr, err := route.Sync(ns, cfg.protocol, nil)
	if err != nil {
		return err
	}
	if err := (nat.NetworkMasquerade{Network: MasqueradeNetwork}).Delete(ctx, masqIn); err != nil {
		return err
	}
	path := filepath.Join(cfg.confDir, ConflistName)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	log.Info("removed the agent's routes, masquerade rules and CNI configuration", "routes", len(sr.Removed), "conflist", path)
	return nil
}

// setState logs msg when this node's state changes.
func (a *agent) setState(msg string, args ...any) {
	a.m.setMissingPodCIDR(msg != "ready")
	key := msg + fmt.Sprint(args...)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state == key {
		return
	}
	a.state = key
	if msg == "ready" {
		a.log.Info("node network ready", args...)
	} else {
		a.log.Warn(msg, args...)
	}
}

// warn logs msg about Node name when it differs from the last one; ""
// clears it.
func (a *agent) warn(name, msg string, args ...any) {
	key := msg + fmt.Sprint(args...)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.warned[name] == key {
		return
	}
	a.warned[name] = key
	if msg != "" {
		a.log.Warn(msg, append([]any{"node", name}, args...)...)
	}
}

func (a *agent) forgetWarnings(seen map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for n := range a.warned {
		if !seen[n] {
			delete(a.warned, n)
		}
	}
}

func parsePodCIDRs(n *corev1.Node) ([]netip.Prefix, error) {
	list := n.Spec.PodCIDRs
	if len(list) == 0 && n.Spec.PodCIDR != "" {
		list = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func internalIP(n *corev1.Node, v4 bool) (netip.Addr, bool) {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err == nil && ip.Unmap().Is4() == v4 {
			return ip.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// onLink reports whether ip is inside a directly connected (gateway-less,
// non-default) route of the main table: the kernel would reach it on the
// link, without a router.
func onLink(routes []route.Route, ip netip.Addr) bool {
	for _, r := range routes {
		if !r.Gateway.IsValid() && r.Dst.Bits() > 0 && r.Dst.Contains(ip) {
			return true
		}
	}
	return false
}

func overlaps(c netip.Prefix, own []netip.Prefix) bool {
	for _, o := range own {
		if o.Overlaps(c) {
			return true
		}
	}
	return false
}

func familiesOf(ps []netip.Prefix) []route.Family {
	var out []route.Family
	for _, p := range ps {
		f := route.IPv4
		if p.Addr().Is6() {
			f = route.IPv6
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

func familyName(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func routeList(rs []route.Route) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ", ")
}
