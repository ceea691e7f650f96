package main

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/daemon"
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

	mu      sync.Mutex
	lastOK  time.Time
	started time.Time
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
// timeout (twice the resync period), counted from start before the first.
func (m *metrics) healthz(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	last := m.lastOK
	if last.IsZero() {
		last = m.started
	}
	m.mu.Unlock()
	if age := time.Since(last); age > m.healthTimeout {
		http.Error(w, fmt.Sprintf("no successful reconcile for %v", age.Round(time.Millisecond)), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}
