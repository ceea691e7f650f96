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
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/service"
	"github.com/podnet/podnet/service/kube"
)

// source is where the Services come from.
type source interface {
	// clusterCIDRs returns the pod networks to use when --cluster-cidr is
	// not given.
	clusterCIDRs(ctx context.Context) ([]netip.Prefix, error)
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

func (m *manifestSource) clusterCIDRs(context.Context) ([]netip.Prefix, error) { return nil, nil }

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

// clusterCIDRs waits for this node's Node object to have spec.podCIDRs,
// watching it through an informer, and returns them.
func (k *kubeSource) clusterCIDRs(ctx context.Context) ([]netip.Prefix, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := informers.NewSharedInformerFactoryWithOptions(k.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", k.node).String()
	}))
	inf := f.Core().V1().Nodes().Informer()
	found := make(chan []netip.Prefix, 1)
	check := func(obj any) {
		n, ok := obj.(*corev1.Node)
		if !ok {
			return
		}
		cidrs, err := parseCIDRs(strings.Join(n.Spec.PodCIDRs, ","))
		if err != nil || len(cidrs) == 0 {
			k.log.Warn("waiting for this node's podCIDRs (or give --cluster-cidr)", "node", k.node, "err", err)
			return
		}
		select {
		case found <- cidrs:
		default:
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: check, UpdateFunc: func(_, n any) { check(n) }}); err != nil {
		return nil, err
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	k.log.Info("waiting for this node's Node object", "node", k.node)
	select {
	case cidrs := <-found:
		k.log.Info("cluster CIDRs from the Node's podCIDRs", "node", k.node, "cidrs", cidrs)
		return cidrs, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("no podCIDRs on Node %q: %w", k.node, ctx.Err())
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
