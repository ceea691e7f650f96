package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	anpv1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	anpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	anpinformers "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions"

	"github.com/podnet/podnet"
	"github.com/podnet/podnet/policy"
)

// Config configures a Source. The zero value of every optional field is
// correct.
type Config struct {
	Client   kubernetes.Interface // required
	Enforcer *policy.Enforcer     // required: receives every change
	// AdminClient, if set, is followed for the AdminNetworkPolicies and
	// BaselineAdminNetworkPolicies (policy.networking.k8s.io/v1alpha1)
	// of sigs.k8s.io/network-policy-api, and for the Nodes their nodes
	// peers select. Set it only where their CRDs are installed: Start
	// waits until it has listed them.
	AdminClient anpclient.Interface
	// NodeName is this node's name: its pods are local (enforced here);
	// every other pod is a peer. Required.
	NodeName string
	// ResyncPeriod makes the informers re-deliver every object that often;
	// 0 means never (the enforcer's own Verify repairs the table).
	ResyncPeriod time.Duration
	// PodWait bounds how long AddSandbox waits for a pod the informers
	// have not delivered yet; 0 means DefaultPodWait.
	PodWait time.Duration
	// Logger receives watch errors and rejected objects; nil discards.
	Logger *slog.Logger
}

// Source keeps an Enforcer's model equal to the API server's Pods,
// Namespaces and NetworkPolicies.
type Source struct {
	cfg     Config
	log     *slog.Logger
	factory informers.SharedInformerFactory
	admin   anpinformers.SharedInformerFactory // nil without Config.AdminClient
	pods    corelisters.PodLister
	// counters of the events handled and the objects refused, for metrics
	changes, rejected atomic.Uint64

	mu        sync.Mutex // serialises pod changes, so that sandboxes apply to the latest
	sandboxes map[policy.Name]*sandbox
}

// New checks cfg and sets up the informers; nothing is read until Start.
func New(cfg Config) (*Source, error) {
	if cfg.Client == nil || cfg.Enforcer == nil || cfg.NodeName == "" {
		return nil, podnet.Invalid("network policy source: Client, Enforcer and NodeName are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.PodWait <= 0 {
		cfg.PodWait = DefaultPodWait
	}
	f := informers.NewSharedInformerFactory(cfg.Client, cfg.ResyncPeriod)
	s := &Source{cfg: cfg, log: log, factory: f, pods: f.Core().V1().Pods().Lister(), sandboxes: map[policy.Name]*sandbox{}}
	if cfg.AdminClient != nil {
		s.admin = anpinformers.NewSharedInformerFactory(cfg.AdminClient, cfg.ResyncPeriod)
	}
	return s, nil
}

// Start starts the informers and returns once the enforcer holds every
// Pod, Namespace and NetworkPolicy the API server has (and, with
// Config.AdminClient, every AdminNetworkPolicy and
// BaselineAdminNetworkPolicy); from then on the
// informers' goroutines hand each change to it until ctx is done. While
// the API server cannot be reached Start keeps retrying and logs why; it
// fails only when ctx ends first.
//
// Equivalent to: kubectl get --watch pods,namespaces,networkpolicies --all-namespaces
func (s *Source) Start(ctx context.Context) error {
	infs := map[string]cache.SharedIndexInformer{
		"pods":            s.factory.Core().V1().Pods().Informer(),
		"namespaces":      s.factory.Core().V1().Namespaces().Informer(),
		"networkpolicies": s.factory.Networking().V1().NetworkPolicies().Informer(),
	}
	if s.admin != nil {
		infs["adminnetworkpolicies"] = s.admin.Policy().V1alpha1().AdminNetworkPolicies().Informer()
		infs["baselineadminnetworkpolicies"] = s.admin.Policy().V1alpha1().BaselineAdminNetworkPolicies().Informer()
		infs["nodes"] = s.factory.Core().V1().Nodes().Informer()
	}
	var synced []cache.InformerSynced
	for what, inf := range infs {
		if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			s.log.Warn("cannot list or watch the API server; retrying, the rules in force stay", "what", what, "err", err)
		}); err != nil {
			return fmt.Errorf("network policy source: %w", err)
		}
		reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { s.changed(obj, false) },
			UpdateFunc: func(old, obj any) {
				if resourceVersion(old) != resourceVersion(obj) {
					s.changed(obj, false) // a relist delivers unchanged objects again
				}
			},
			DeleteFunc: func(obj any) { s.changed(obj, true) },
		})
		if err != nil {
			return fmt.Errorf("network policy source: %w", err)
		}
		synced = append(synced, reg.HasSynced)
	}
	s.factory.Start(ctx.Done())
	if s.admin != nil {
		s.admin.Start(ctx.Done())
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("network policy source: informers did not sync: %w", context.Cause(ctx))
	}
	return nil
}

// Changes returns how many events the source has handed to the enforcer
// and how many objects the enforcer refused as invalid.
func (s *Source) Changes() (changes, rejected uint64) {
	return s.changes.Load(), s.rejected.Load()
}

func resourceVersion(obj any) string {
	type versioned interface{ GetResourceVersion() string }
	if v, ok := obj.(versioned); ok {
		return v.GetResourceVersion()
	}
	return ""
}

// changed hands one object (deleted or not) to the enforcer.
func (s *Source) changed(obj any, deleted bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj, deleted = t.Obj, true
	}
	s.changes.Add(1)
	e := s.cfg.Enforcer
	var err error
	switch o := obj.(type) {
	case *corev1.Pod:
		err = s.podChanged(o, deleted)
	case *corev1.Namespace:
		if deleted {
			e.DeleteNamespace(o.Name)
		} else {
			err = e.UpdateNamespace(ConvertNamespace(o))
		}
	case *networkingv1.NetworkPolicy:
		n := policy.Name{Namespace: o.Namespace, Name: o.Name}
		if deleted {
			e.DeletePolicy(n)
			break
		}
		p, cerr := ConvertPolicy(o)
		if err = cerr; err == nil {
			err = e.UpdatePolicy(p)
		}
	case *corev1.Node:
		if deleted {
			e.DeleteNode(o.Name)
			break
		}
		n, cerr := ConvertNode(o)
		if err = cerr; err == nil {
			err = e.UpdateNode(n)
		}
	case *anpv1alpha1.AdminNetworkPolicy:
		if deleted {
			e.DeleteAdminPolicy(o.Name)
			break
		}
		p, cerr := ConvertAdminPolicy(o)
		if err = cerr; err == nil {
			err = e.UpdateAdminPolicy(p)
		}
	case *anpv1alpha1.BaselineAdminNetworkPolicy:
		if deleted {
			e.DeleteBaselinePolicy(o.Name)
			break
		}
		p, cerr := ConvertBaselinePolicy(o)
		if err = cerr; err == nil {
			err = e.UpdateBaselinePolicy(p)
		}
	}
	if err != nil {
		// The last good model of the object stays; its next change may be
		// valid.
		s.rejected.Add(1)
		s.log.Error("object rejected; the rules in force for it stay", "err", err)
	}
}
