package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/service"
)

// TriggerTimeAnnotation is the EndpointSlice annotation that tells when
// the change it carries was made (set by the EndpointSlice controller).
const TriggerTimeAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"

// byService indexes EndpointSlices by "namespace/service-name".
const byService = "podnet.service"

// Config configures a Source. The zero value of every optional field is
// correct.
type Config struct {
	Client kubernetes.Interface // required
	Proxy  *service.Proxy       // required: receives every change
	// NodeName, when set, makes the source follow that Node's
	// topology.kubernetes.io/zone label into Proxy.SetZone, so that
	// endpoints hinted for the zone are preferred (needs get, list and
	// watch on nodes).
	NodeName string
	// FollowServiceCIDRs makes the source hand the CIDRs of the API
	// server's ServiceCIDR objects (networking.k8s.io/v1) to
	// Proxy.SetServiceCIDRs, so that unallocated service addresses are
	// dropped (needs list and watch on servicecidrs).
	FollowServiceCIDRs bool
	// ResyncPeriod makes the informers re-deliver every object that often;
	// 0 means never (the proxy's own periodic sync repairs the tables).
	ResyncPeriod time.Duration
	// Logger receives watch errors and rejected Services; nil discards.
	Logger *slog.Logger
}

// Source keeps a Proxy's Services equal to the API server's.
type Source struct {
	cfg      Config
	log      *slog.Logger
	factory  informers.SharedInformerFactory
	services corelisters.ServiceLister
	slices   cache.Indexer
	started  time.Time
	// counters of the events handled, for metrics
	serviceChanges, sliceChanges, rejected atomic.Uint64
}

// New checks cfg and sets up the informers; nothing is read until Start.
func New(cfg Config) (*Source, error) {
	if cfg.Client == nil || cfg.Proxy == nil {
		return nil, podnet.Invalid("kube source: Client and Proxy are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := informers.NewSharedInformerFactory(cfg.Client, cfg.ResyncPeriod)
	s := &Source{cfg: cfg, log: log, factory: f, services: f.Core().V1().Services().Lister()}
	return s, nil
}

// Start starts the informers and returns once the proxy holds every
// Service the API server has, with its endpoints; from then on the
// informers' goroutines hand each change to the proxy until ctx is done.
// While the API server cannot be reached Start keeps retrying and logs
// why; it fails only when ctx ends first.
//
// Equivalent to: kubectl get --watch services,endpointslices --all-namespaces
func (s *Source) Start(ctx context.Context) error {
	s.started = time.Now()
	svcInf := s.factory.Core().V1().Services().Informer()
	sliceInf := s.factory.Discovery().V1().EndpointSlices().Informer()
	if err := sliceInf.AddIndexers(cache.Indexers{byService: sliceKey}); err != nil {
		return fmt.Errorf("kube source: %w", err)
	}
	s.slices = sliceInf.GetIndexer()
	for what, inf := range map[string]cache.SharedIndexInformer{"services": svcInf, "endpointslices": sliceInf} {
		if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			s.log.Warn("cannot list or watch the API server; retrying, the rules in force stay", "what", what, "err", err)
		}); err != nil {
			return fmt.Errorf("kube source: %w", err)
		}
	}
	svcReg, err := svcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { s.serviceChanged(obj) },
		UpdateFunc: func(old, obj any) {
			o, _ := old.(*corev1.Service)
			n, _ := obj.(*corev1.Service)
			if o == nil || n == nil || o.ResourceVersion != n.ResourceVersion {
				s.serviceChanged(obj) // a relist delivers unchanged Services again
			}
		},
		DeleteFunc: func(obj any) { s.serviceChanged(obj) },
	})
	if err != nil {
		return fmt.Errorf("kube source: %w", err)
	}
	sliceReg, err := sliceInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.sliceChanged(nil, obj) },
		UpdateFunc: func(old, obj any) { s.sliceChanged(old, obj) },
		DeleteFunc: func(obj any) { s.sliceChanged(nil, obj) },
	})
	if err != nil {
		return fmt.Errorf("kube source: %w", err)
	}
	synced := []cache.InformerSynced{svcReg.HasSynced, sliceReg.HasSynced}
	if s.cfg.FollowServiceCIDRs {
		cidrSynced, err := s.followServiceCIDRs()
		if err != nil {
			return err
		}
		synced = append(synced, cidrSynced)
	}
	if s.cfg.NodeName != "" {
		nodeSynced, err := s.followZone(ctx)
		if err != nil {
			return err
		}
		synced = append(synced, nodeSynced)
	}
	s.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("kube source: informers did not sync: %w", context.Cause(ctx))
	}
	return nil
}

// followServiceCIDRs registers an informer on the ServiceCIDR objects
// that hands their CIDRs, of the proxy's families, to the proxy whenever
// one changes.
func (s *Source) followServiceCIDRs() (cache.InformerSynced, error) {
	inf := s.factory.Networking().V1().ServiceCIDRs()
	lister := inf.Lister()
	update := func(any) {
		objs, err := lister.List(labels.Everything())
		if err != nil {
			return
		}
		var cidrs []netip.Prefix
		fams := s.cfg.Proxy.Families()
		for _, o := range objs {
			for _, c := range o.Spec.CIDRs {
				p, err := netip.ParsePrefix(c)
				if err == nil && slices.Contains(fams, podnet.FamilyOf(p.Addr())) {
					cidrs = append(cidrs, p)
				}
			}
		}
		if err := s.cfg.Proxy.SetServiceCIDRs(cidrs); err != nil {
			s.log.Error("service CIDRs rejected", "cidrs", cidrs, "err", err)
		}
	}
	reg, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: update, UpdateFunc: func(_, o any) { update(o) }, DeleteFunc: update,
	})
	if err != nil {
		return nil, fmt.Errorf("kube source: %w", err)
	}
	return reg.HasSynced, nil
}

// followZone starts an informer on this node's Node object that hands its
// zone label to the proxy.
func (s *Source) followZone(ctx context.Context) (cache.InformerSynced, error) {
	f := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, s.cfg.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", s.cfg.NodeName).String()
		}))
	inf := f.Core().V1().Nodes().Informer()
	zone := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok {
			s.cfg.Proxy.SetZone(n.Labels[corev1.LabelTopologyZone])
		}
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    zone,
		UpdateFunc: func(_, obj any) { zone(obj) },
		DeleteFunc: func(any) { s.cfg.Proxy.SetZone("") },
	})
	if err != nil {
		return nil, fmt.Errorf("kube source: %w", err)
	}
	f.Start(ctx.Done())
	return reg.HasSynced, nil
}

// Changes returns how many Service and EndpointSlice events the source
// has handed to the proxy, and how many Services the proxy refused as
// invalid.
func (s *Source) Changes() (services, endpointSlices, rejected uint64) {
	return s.serviceChanges.Load(), s.sliceChanges.Load(), s.rejected.Load()
}

func sliceKey(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	n := es.Labels[discoveryv1.LabelServiceName]
	if n == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + n}, nil
}

func (s *Source) serviceChanged(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return
	}
	s.serviceChanges.Add(1)
	s.refresh(svc.Namespace, svc.Name)
}

// sliceChanged hands a slice's Service to the proxy. old is the slice as
// it was for an update, nil otherwise. An update that changes nothing (a
// relist after a broken watch delivers every slice again) is skipped, and a
// trigger time is recorded only when the slice brings a new one: an old
// annotation seen again is not a change waiting to be programmed, and
// counting it would report as latency the time the watch was broken.
func (s *Source) sliceChanged(old, obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	n := es.Labels[discoveryv1.LabelServiceName]
	if n == "" {
		return
	}
	prev, _ := old.(*discoveryv1.EndpointSlice)
	if prev != nil && prev.ResourceVersion == es.ResourceVersion {
		return
	}
	s.sliceChanges.Add(1)
	if prev == nil || prev.Annotations[TriggerTimeAnnotation] != es.Annotations[TriggerTimeAnnotation] {
		s.recordTrigger(es)
	}
	s.refresh(es.Namespace, n)
}

// recordTrigger passes the slice's trigger time to the proxy. Times from
// before the source started belong to changes made while no proxy was
// watching; kube-proxy leaves them out too.
func (s *Source) recordTrigger(es *discoveryv1.EndpointSlice) {
	v := es.Annotations[TriggerTimeAnnotation]
	if v == "" {
		return
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil || t.Before(s.started) {
		return
	}
	s.cfg.Proxy.RecordTrigger(t)
}

// refresh rebuilds the proxy's model of one Service from the informers'
// caches.
func (s *Source) refresh(namespace, name string) {
	n := service.Name{Namespace: namespace, Name: name}
	svc, err := s.services.Services(namespace).Get(name)
	if err != nil {
		s.cfg.Proxy.Delete(n) // gone (or not created yet: its slices came first)
		return
	}
	objs, _ := s.slices.ByIndex(byService, namespace+"/"+name)
	eps := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		eps = append(eps, o.(*discoveryv1.EndpointSlice))
	}
	model, ok, err := Convert(svc, eps, s.cfg.Proxy.Families())
	if err == nil && ok {
		err = s.cfg.Proxy.Update(model)
	}
	switch {
	case err != nil:
		// The last good rules of this Service stay; the next change to it
		// may be valid.
		s.rejected.Add(1)
		s.log.Error("service rejected; its rules in force stay", "service", n.String(), "err", err)
	case !ok:
		s.cfg.Proxy.Delete(n)
	}
}
