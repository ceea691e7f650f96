package main

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/daemon"
	"github.com/podnet/podnet/policy"
)

// metrics records each reconcile, under podnet_agent_….
type metrics struct {
	reg           *prometheus.Registry
	healthTimeout time.Duration

	duration       prometheus.Histogram
	reconciles     *prometheus.CounterVec
	repairs        *prometheus.CounterVec
	lastSuccess    prometheus.Gauge
	routes         prometheus.Gauge
	skipped        prometheus.Gauge
	missingPodCIDR prometheus.Gauge
	ready          prometheus.Gauge

	// NetworkPolicy, when --network-policy: the sync time and failures
	// under Felix's names, the programming latency under podnet's (see
	// docs/network-policy.md for the correspondences).
	policyApply       prometheus.Summary
	policyFailures    prometheus.Counter
	policyProgramming prometheus.Histogram
	policySyncs       *prometheus.CounterVec

	mu      sync.Mutex
	lastOK  time.Time
	started time.Time
	policy  policyHealth
}

// policyHealth is what /healthz reads of the enforcer.
type policyHealth struct {
	enabled      bool
	failingSince time.Time // since when the table is not current (start, or a failed sync); zero while it is
}

func newMetrics(healthTimeout time.Duration) *metrics {
	m := &metrics{
		reg: daemon.NewRegistry(), healthTimeout: healthTimeout, started: time.Now(),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "podnet_agent_reconcile_duration_seconds",
			Help: "Time one reconcile of routes, masquerade rules, CNI configuration and Node condition took", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15)}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podnet_agent_reconciles_total",
			Help: "Reconciles, by result (ok, error)"}, []string{"result"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podnet_agent_repairs_total",
			Help: "Reconciles that had to write something, by what (routes, masquerade, conflist): a change, or a repair of what someone removed"}, []string{"what"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_agent_last_reconcile_timestamp_seconds",
			Help: "When the last successful reconcile ended"}),
		routes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_agent_routes",
			Help: "Routes to other nodes' podCIDRs in place"}),
		skipped: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_agent_skipped_pod_cidrs",
			Help: "Other nodes' podCIDRs without a route (no InternalIP of the family, or not directly connected)"}),
		missingPodCIDR: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_agent_waiting_for_pod_cidr",
			Help: "1 while this node's Node has no (valid) podCIDR, so no CNI configuration is written"}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_agent_ready",
			Help: "1 once routes, masquerade and the CNI configuration are in place"}),
	}
	m.reg.MustRegister(m.duration, m.reconciles, m.repairs, m.lastSuccess, m.routes, m.skipped, m.missingPodCIDR, m.ready)
	return m
}

// enablePolicy registers the NetworkPolicy metrics and makes /healthz
// wait for the enforcer.
func (m *metrics) enablePolicy() {
	m.policyApply = prometheus.NewSummary(prometheus.SummaryOpts{Name: "felix_int_dataplane_apply_time_seconds",
		Help:       "Time one NetworkPolicy sync took to write the nftables table (Calico Felix's name)",
		Objectives: map[float64]float64{0.5: 0.05, 0.9: 0.01, 0.99: 0.001}})
	m.policyFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "felix_int_dataplane_failures",
		Help: "NetworkPolicy syncs that failed and will be retried as full syncs (Calico Felix's name)"})
	m.policyProgramming = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "podnet_network_policy_programming_duration_seconds",
		Help:    "Time from a Pod, Namespace or NetworkPolicy change reaching the agent to the end of the sync that put it in the kernel",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)})
	m.policySyncs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podnet_network_policy_syncs_total",
		Help: "NetworkPolicy syncs that wrote something, by kind (full, partial) and result (ok, error)"}, []string{"kind", "result"})
	m.reg.MustRegister(m.policyApply, m.policyFailures, m.policyProgramming, m.policySyncs)
	m.mu.Lock()
	m.policy.enabled, m.policy.failingSince = true, time.Now() // not in force until the first sync
	m.mu.Unlock()
}

// policySynced records one sync of the enforcer (policy.RunConfig.OnSync).
func (m *metrics) policySynced(r policy.SyncResult, err error) {
	kind := "partial"
	if r.Full {
		kind = "full"
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.policySyncs.WithLabelValues(kind, "error").Inc()
		m.policyFailures.Inc()
		if m.policy.failingSince.IsZero() {
			m.policy.failingSince = time.Now()
		}
		return
	}
	m.policySyncs.WithLabelValues(kind, "ok").Inc()
	m.policyApply.Observe(r.Duration.Seconds())
	if !r.Pending.IsZero() {
		m.policyProgramming.Observe(time.Since(r.Pending).Seconds())
	}
	m.policy.failingSince = time.Time{}
}

func (m *metrics) observe(start time.Time, r result, err error) {
	m.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		m.reconciles.WithLabelValues("error").Inc()
		return
	}
	m.reconciles.WithLabelValues("ok").Inc()
	for _, w := range r.repaired {
		m.repairs.WithLabelValues(w).Inc()
	}
	now := time.Now()
	m.lastSuccess.Set(float64(now.UnixNano()) / 1e9)
	m.routes.Set(float64(r.routes))
	m.skipped.Set(float64(r.skipped))
	if r.ready {
		m.ready.Set(1)
	} else {
		m.ready.Set(0)
	}
	m.mu.Lock()
	m.lastOK = now
	m.mu.Unlock()
}

func (m *metrics) setMissingPodCIDR(missing bool) {
	if missing {
		m.missingPodCIDR.Set(1)
	} else {
		m.missingPodCIDR.Set(0)
	}
}

// healthz answers 200 while a reconcile succeeded within the health
// timeout (twice the resync period), counted from start before the first,
// and, with network policy, while the enforcer's table is current: its
// last sync succeeded, or it has been failing (or not yet done) for less
// than the health timeout.
func (m *metrics) healthz(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	last := m.lastOK
	if last.IsZero() {
		last = m.started
	}
	p := m.policy
	m.mu.Unlock()
	if age := time.Since(last); age > m.healthTimeout {
		http.Error(w, fmt.Sprintf("no successful reconcile for %v", age.Round(time.Millisecond)), http.StatusServiceUnavailable)
		return
	}
	if p.enabled && !p.failingSince.IsZero() {
		if age := time.Since(p.failingSince); age > m.healthTimeout {
			http.Error(w, fmt.Sprintf("network policies not in force for %v (sync failing or not done)", age.Round(time.Millisecond)), http.StatusServiceUnavailable)
			return
		}
	}
	fmt.Fprintln(w, "ok")
}
