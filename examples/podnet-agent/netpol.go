package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	anpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/podnet/podnet/netns"
	"github.com/podnet/podnet/policy"
	"github.com/podnet/podnet/policy/cnisock"
	policykube "github.com/podnet/podnet/policy/kube"
)

// networkPolicy runs the NetworkPolicy enforcer of this node: policy/kube's
// informers feed a policy.Enforcer whose table is in the node's namespace.
type networkPolicy struct {
	e   *policy.Enforcer
	cfg policykube.Config // run sets AdminClient from admin
	// admin tells whether to follow the admin policies (a client) or not
	// (nil); it may wait for the API server.
	admin  func(context.Context) (anpclient.Interface, error)
	m      *metrics
	log    *slog.Logger
	socket string // where podnet-bridge tells new pods' addresses; "" nowhere
}

func newNetworkPolicy(ns *netns.NS, client kubernetes.Interface, admin func(context.Context) (anpclient.Interface, error), node, socket string, m *metrics, log *slog.Logger) (*networkPolicy, error) {
	e, err := policy.New(policy.Config{NetNS: ns, Logger: log.With("component", "network-policy")})
	if err != nil {
		return nil, err
	}
	cfg := policykube.Config{Client: client, Enforcer: e, NodeName: node, Logger: log.With("component", "network-policy")}
	if _, err := policykube.New(cfg); err != nil { // checks cfg before anything runs
		return nil, err
	}
	np := &networkPolicy{e: e, cfg: cfg, admin: admin, m: m, log: log, socket: socket}
	m.reg.MustRegister(deniedCollector{e})
	return np, nil
}

// run lists Pods, Namespaces and NetworkPolicies, then keeps the table in
// step until ctx is done. The first sync waits for the informers, so that
// it isolates every pod with all its policies at once. Only then does it
// serve podnet-bridge on the socket: until the model is whole an ADD
// finds no socket and fails at once, and kubelet retries.
func (np *networkPolicy) run(ctx context.Context) error {
	cfg := np.cfg
	var err error
	if cfg.AdminClient, err = np.admin(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	src, err := policykube.New(cfg)
	if err != nil {
		return err
	}
	np.log.Info("network policy: listing Pods, Namespaces and NetworkPolicies")
	if err := src.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	np.log.Info("network policy: listed; enforcing", "table", "inet "+np.e.Table())
	if np.socket == "" {
		return np.e.Run(ctx, policy.RunConfig{OnSync: np.m.policySynced})
	}
	ln, err := cnisock.Listen(np.socket)
	if err != nil {
		return err
	}
	np.log.Info("network policy: serving podnet-bridge", "socket", np.socket)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() {
		served <- (&cnisock.Server{Handler: src, Logger: np.log.With("component", "network-policy")}).Serve(ctx, ln)
		cancel() // a socket that fails stops the agent: pods could no longer start
	}()
	err = np.e.Run(ctx, policy.RunConfig{OnSync: np.m.policySynced})
	cancel()
	return errors.Join(err, <-served)
}

// cleanupNetworkPolicy deletes the enforcer's table, if any.
//
// Equivalent to: nft delete table inet podnet-policy
func cleanupNetworkPolicy(ctx context.Context, ns *netns.NS) error {
	e, err := policy.New(policy.Config{NetNS: ns})
	if err != nil {
		return err
	}
	return e.Cleanup(ctx)
}

// deniedCollector reads the enforcer's denied counters (nftables named
// counters) at each scrape.
type deniedCollector struct{ e *policy.Enforcer }

var deniedDesc = prometheus.NewDesc("podnet_network_policy_denied_packets_total",
	"Packets dropped because no NetworkPolicy allowed them, by direction (the nftables counters denied-ingress and denied-egress)",
	[]string{"direction"}, nil)

func (d deniedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- deniedDesc }

func (d deniedCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	in, eg, err := d.e.Denied(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(deniedDesc, fmt.Errorf("read the denied counters: %w", err))
		return
	}
	ch <- prometheus.MustNewConstMetric(deniedDesc, prometheus.CounterValue, float64(in), "ingress")
	ch <- prometheus.MustNewConstMetric(deniedDesc, prometheus.CounterValue, float64(eg), "egress")
}

// adminGroupVersion serves AdminNetworkPolicy and
// BaselineAdminNetworkPolicy once their CRDs are installed.
const adminGroupVersion = "policy.networking.k8s.io/v1alpha1"

// adminClient returns the client the enforcer follows AdminNetworkPolicies
// and BaselineAdminNetworkPolicies with, or nil: with mode "false" never;
// with "auto" when the API server serves both kinds at the start (it asks
// until the API server answers; installing the CRDs later takes a restart
// of the agent); with "true" always (the enforcer then waits until they
// are served).
func adminClient(ctx context.Context, rc *rest.Config, client kubernetes.Interface, mode string, log *slog.Logger) (anpclient.Interface, error) {
	if mode == "false" {
		return nil, nil
	}
	if mode == "auto" {
		var served bool
		for {
			var err error
			if served, err = servesAdminPolicies(client.Discovery()); err == nil {
				break
			}
			log.Debug("network policy: cannot ask the API server for the admin policies; retrying", "groupVersion", adminGroupVersion, "err", err)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
		}
		if !served {
			log.Info("network policy: the API server serves no AdminNetworkPolicy or BaselineAdminNetworkPolicy; not following them (restart after installing their CRDs)", "groupVersion", adminGroupVersion)
			return nil, nil
		}
	}
	log.Info("network policy: following AdminNetworkPolicies and BaselineAdminNetworkPolicies", "groupVersion", adminGroupVersion)
	return anpclient.NewForConfig(rc)
}

// servesAdminPolicies reports whether the API server serves both admin
// policy kinds.
func servesAdminPolicies(d discovery.DiscoveryInterface) (bool, error) {
	list, err := d.ServerResourcesForGroupVersion(adminGroupVersion)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	have := map[string]bool{}
	for _, r := range list.APIResources {
		have[r.Name] = true
	}
	return have["adminnetworkpolicies"] && have["baselineadminnetworkpolicies"], nil
}
