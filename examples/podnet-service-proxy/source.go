package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/service"
	"github.com/podnet/podnet/service/kube"
)

// source is where the Services come from.
type source interface {
	// waitNode returns what this node's Node object says, waiting for its
	// podCIDRs when needCIDRs (--cluster-cidr not given); the zero
	// nodeInfo when the source has no Node objects.
	waitNode(ctx context.Context, needCIDRs bool) (nodeInfo, error)
	// load puts every Service into p once; an error means nothing was
	// loaded.
	load(ctx context.Context, p *service.Proxy) error
	// start loads the Services into p and keeps p up to date in the
	// background until ctx is done.
	start(ctx context.Context, p *service.Proxy) error
	// counts returns the Service and endpoint changes seen, and the
	// changes refused as invalid.
	counts() (services, endpoints, rejected uint64)
}

// manifestSource reads Services from manifest files and polls them for
// changes.
type manifestSource struct {
	path     string
	poll     time.Duration
	log      *slog.Logger
	loads    atomic.Uint64 // successful reloads
	rejected atomic.Uint64
}

func (m *manifestSource) waitNode(context.Context, bool) (nodeInfo, error) { return nodeInfo{}, nil }

func (m *manifestSource) counts() (uint64, uint64, uint64) {
	n := m.loads.Load()
	return n, n, m.rejected.Load()
}

// load hands the manifests' Services to the proxy. A rejected read leaves
// the proxy with the Services it had, so the last good rules stay.
func (m *manifestSource) load(_ context.Context, p *service.Proxy) error {
	objs, err := readManifests(m.path)
	if err == nil {
		var svcs []service.Service
		if svcs, err = objs.toServices(p.Families()); err == nil {
			err = p.Replace(svcs)
		}
	}
	if err != nil {
		m.rejected.Add(1)
		return err
	}
	m.loads.Add(1)
	return nil
}

func (m *manifestSource) start(ctx context.Context, p *service.Proxy) error {
	stamp, _ := fingerprint(m.path)
	if err := m.load(ctx, p); err != nil {
		m.log.Error("manifests rejected; keeping the rules in place", "err", err)
	}
	go m.watch(ctx, p, stamp)
	return nil
}

// watch reloads the manifests when their files change, until ctx is done.
// When the files cannot be listed the old stamp is kept, so the change is
// still seen once they can.
func (m *manifestSource) watch(ctx context.Context, p *service.Proxy, stamp string) {
	t := time.NewTicker(m.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur, err := fingerprint(m.path)
		if err != nil || cur == stamp {
			continue
		}
		stamp = cur
		if err := m.load(ctx, p); err != nil {
			m.log.Error("manifests rejected; keeping the last good rules", "err", err)
		}
	}
}

// kubeSource follows an API server.
type kubeSource struct {
	client kubernetes.Interface
	node   string
	// serviceCIDRs: follow the API server's ServiceCIDR objects (no
	// --service-cidr given).
	serviceCIDRs bool
	log          *slog.Logger
	src          atomic.Pointer[kube.Source]
}

// newKubeSource connects to the API server of kubeconfig, or to the
// in-cluster one when kubeconfig is "".
func newKubeSource(kubeconfig, node string, log *slog.Logger) (*kubeSource, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "podnet-service-proxy"
	kube.LogUnreachable(cfg, log, 30*time.Second)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return &kubeSource{client: cs, node: node, log: log}, nil
}

// nodeInfo is what the proxy takes from its Node object.
type nodeInfo struct {
	podCIDRs []netip.Prefix // spec.podCIDRs
	// ips are the node's primary addresses: its first InternalIP (else
	// ExternalIP) and the first of the other family, as kube-proxy
	// reads them (k8s.io/component-helpers GetNodeHostIPs).
	ips []netip.Addr
}

func readNode(n *corev1.Node) (nodeInfo, error) {
	cidrs, err := parseCIDRs(strings.Join(n.Spec.PodCIDRs, ","))
	if err != nil {
		return nodeInfo{}, fmt.Errorf("podCIDRs of Node %s: %w", n.Name, err)
	}
	var all []netip.Addr
	for _, typ := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); a.Type == typ && err == nil {
				all = append(all, ip.Unmap())
			}
		}
	}
	var ips []netip.Addr
	for _, ip := range all {
		if len(ips) == 0 || len(ips) == 1 && ip.Is4() != ips[0].Is4() {
			ips = append(ips, ip)
		}
	}
	return nodeInfo{podCIDRs: cidrs, ips: ips}, nil
}

// nodeAddressWait bounds the wait for the Node's addresses when its
// podCIDRs are not needed: kube-proxy waits as long, then goes on
// without them.
const nodeAddressWait = 30 * time.Second

// waitNode lists this node's Node object, once a second, until it has
// spec.podCIDRs (needCIDRs: no bound, the proxy cannot work without
// them) or, otherwise, an address, for at most nodeAddressWait. An API
// server that cannot be reached is reported by kube.LogUnreachable.
func (k *kubeSource) waitNode(ctx context.Context, needCIDRs bool) (nodeInfo, error) {
	k.log.Info("waiting for this node's Node object", "node", k.node)
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		// A list by name: the ClusterRole grants list and watch, not get.
		nodes, err := k.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + k.node})
		var info nodeInfo
		if err == nil && len(nodes.Items) == 1 {
			info, err = readNode(&nodes.Items[0])
		} else if err == nil {
			err = fmt.Errorf("no Node %q", k.node)
		}
		switch {
		case needCIDRs && err == nil && len(info.podCIDRs) == 0:
			k.log.Warn("waiting for this node's podCIDRs (or give --cluster-cidr)", "node", k.node)
		case needCIDRs && err == nil, !needCIDRs && len(info.ips) > 0:
			k.log.Info("read the Node object", "node", k.node, "podCIDRs", info.podCIDRs, "nodeIPs", info.ips)
			return info, nil
		case !needCIDRs && time.Since(start) >= nodeAddressWait:
			k.log.Warn("no addresses on this node's Node object; going on without them", "node", k.node, "waited", nodeAddressWait, "err", err)
			return nodeInfo{}, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nodeInfo{}, fmt.Errorf("waiting for Node %q: %w", k.node, ctx.Err())
		}
	}
}

func (k *kubeSource) load(ctx context.Context, p *service.Proxy) error { return k.start(ctx, p) }

func (k *kubeSource) start(ctx context.Context, p *service.Proxy) error {
	src, err := kube.New(kube.Config{Client: k.client, Proxy: p, NodeName: k.node, FollowServiceCIDRs: k.serviceCIDRs, Logger: k.log})
	if err != nil {
		return err
	}
	k.src.Store(src)
	k.log.Info("listing Services and EndpointSlices")
	if err := src.Start(ctx); err != nil {
		return err
	}
	svcs, _ := p.Stats()
	k.log.Info("informers synced", "services_written_so_far", svcs)
	return nil
}

func (k *kubeSource) counts() (uint64, uint64, uint64) {
	if src := k.src.Load(); src != nil {
		return src.Changes()
	}
	return 0, 0, 0
}
