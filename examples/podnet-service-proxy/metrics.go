package main

import (
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/daemon"
	"github.com/podnet/podnet/service"
)

// metrics records each sync. Names that mean what kube-proxy's mean are
// kube-proxy's (kubeproxy_...), so its dashboards and alerts apply; the
// rest are podnet_service_proxy_....
type metrics struct {
	reg           *prometheus.Registry
	proxy         *service.Proxy
	healthTimeout time.Duration

	syncDuration        prometheus.Histogram
	fullSyncDuration    prometheus.Histogram
	partialSyncDuration prometheus.Histogram
	lastSync            prometheus.Gauge
	rulesWritten        prometheus.Gauge
	programming         prometheus.Histogram
	programmingQ        prometheus.Summary
	fullSyncs           prometheus.Counter
	syncErrors          prometheus.Counter
	services, endpoints prometheus.Gauge
}

// syncBuckets are kube-proxy's sync-duration buckets: 1 ms to 16 s.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// programmingBuckets start below kube-proxy's 0.25 s, where this proxy's
// latencies lie, and go on as kube-proxy's do to 5 minutes.
var programmingBuckets = append(prometheus.ExponentialBuckets(0.005, 2, 6),
	append(prometheus.LinearBuckets(0.25, 0.25, 3), prometheus.LinearBuckets(1, 1, 59)...)...)

func newMetrics(p *service.Proxy, src source, healthTimeout time.Duration) *metrics {
	reg := daemon.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &metrics{
		reg: reg, proxy: p, healthTimeout: healthTimeout,
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kubeproxy_sync_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds", Buckets: syncBuckets}),
		fullSyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kubeproxy_sync_full_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds for full resyncs", Buckets: syncBuckets}),
		partialSyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kubeproxy_sync_partial_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds for partial resyncs", Buckets: syncBuckets}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			Help: "The last time proxy rules were successfully synced"}),
		rulesWritten: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kubeproxy_sync_proxy_rules_iptables_total",
			Help: "Rule lines written by the last successful sync"}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kubeproxy_network_programming_duration_seconds",
			Help: "In Cluster Network Programming Latency in seconds: from the EndpointSlice's last-change-trigger-time to the end of the sync that applied it", Buckets: programmingBuckets}),
		programmingQ: prometheus.NewSummary(prometheus.SummaryOpts{Name: "podnet_service_proxy_network_programming_seconds",
			Help:       "Network programming latency (as kubeproxy_network_programming_duration_seconds) over the last 10 minutes, as quantiles",
			Objectives: map[float64]float64{0.5: 0.01, 0.9: 0.005, 0.99: 0.001}, MaxAge: 10 * time.Minute}),
		fullSyncs: prometheus.NewCounter(prometheus.CounterOpts{Name: "podnet_service_proxy_full_syncs_total",
			Help: "Successful full syncs"}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "podnet_service_proxy_sync_errors_total",
			Help: "Failed syncs (each is retried as a full sync)"}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_service_proxy_services",
			Help: "Services with rules"}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podnet_service_proxy_endpoints",
			Help: "Endpoint chains written"}),
	}
	for _, c := range []prometheus.Collector{m.syncDuration, m.fullSyncDuration, m.partialSyncDuration, m.lastSync, m.rulesWritten,
		m.programming, m.programmingQ, m.fullSyncs, m.syncErrors, m.services, m.endpoints} {
		f(c)
	}
	count := func(name, help string, pick func(s, e, r uint64) uint64) {
		f(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(pick(src.counts())) }))
	}
	count("kubeproxy_sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes", func(s, _, _ uint64) uint64 { return s })
	count("kubeproxy_sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes", func(_, e, _ uint64) uint64 { return e })
	count("podnet_service_proxy_rejected_total", "Service reads refused as invalid (manifests or API objects); the last good rules stay", func(_, _, r uint64) uint64 { return r })
	return m
}

// observe records one sync; it is the proxy runner's OnSync.
func (m *metrics) observe(res service.SyncResult, err error) {
	if err != nil {
		m.syncErrors.Inc()
		return
	}
	end := time.Now()
	m.syncDuration.Observe(res.Duration.Seconds())
	if res.Full {
		m.fullSyncs.Inc()
		m.fullSyncDuration.Observe(res.Duration.Seconds())
	} else {
		m.partialSyncDuration.Observe(res.Duration.Seconds())
	}
	m.lastSync.Set(float64(end.UnixNano()) / 1e9)
	m.rulesWritten.Set(float64(res.Rules))
	for _, t := range res.Triggers {
		m.programming.Observe(end.Sub(t).Seconds())
		m.programmingQ.Observe(end.Sub(t).Seconds())
	}
	svcs, eps := m.proxy.Stats()
	m.services.Set(float64(svcs))
	m.endpoints.Set(float64(eps))
}

// healthz is kube-proxy's: 503 once a change has waited longer than the
// health timeout (twice the sync period) without a successful sync.
func (m *metrics) healthz(w http.ResponseWriter, _ *http.Request) {
	st := m.proxy.Status()
	w.Header().Set("Content-Type", "application/json")
	code := http.StatusOK
	if !st.Healthy(time.Now(), m.healthTimeout) {
		code = http.StatusServiceUnavailable
	}
	w.WriteHeader(code)
	fmt.Fprintf(w, "{\"lastUpdated\": %q, \"currentTime\": %q, \"oldestPendingChange\": %q}\n",
		formatTime(st.LastSync), time.Now().Format(time.RFC3339Nano), formatTime(st.PendingSince))
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339Nano)
}
