package main

import (
	"fmt"
	"net/http"
	"sync"
	"time"
)

// metrics are written in the Prometheus text exposition format by hand:
// a handful of counters, gauges and one histogram do not justify the
// client library and its dependencies.
type metrics struct {
	mu             sync.Mutex
	buckets        []float64
	counts         []uint64 // per bucket (not cumulative)
	sum            float64
	count          uint64
	rules          uint64
	syncErrors     uint64
	manifestErrors uint64
	fullSyncs      uint64
	services       int
	endpoints      int
	healthy        bool
}

func newMetrics() *metrics {
	b := []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
	return &metrics{buckets: b, counts: make([]uint64, len(b))}
}

func (m *metrics) observeSync(d time.Duration, rules int, full bool, err error, services, endpoints int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.syncErrors++
		m.healthy = false
		return
	}
	s := d.Seconds()
	for i, b := range m.buckets {
		if s <= b {
			m.counts[i]++
			break
		}
	}
	m.sum += s
	m.count++
	m.rules += uint64(rules)
	if full {
		m.fullSyncs++
	}
	m.services, m.endpoints = services, endpoints
	m.healthy = true
}

func (m *metrics) manifestError() {
	m.mu.Lock()
	m.manifestErrors++
	m.mu.Unlock()
}

func (m *metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	const p = "podnet_service_proxy_"
	fmt.Fprintf(w, "# HELP %ssync_duration_seconds Time of successful syncs.\n# TYPE %ssync_duration_seconds histogram\n", p, p)
	var cum uint64
	for i, b := range m.buckets {
		cum += m.counts[i]
		fmt.Fprintf(w, "%ssync_duration_seconds_bucket{le=\"%g\"} %d\n", p, b, cum)
	}
	fmt.Fprintf(w, "%ssync_duration_seconds_bucket{le=\"+Inf\"} %d\n%ssync_duration_seconds_sum %g\n%ssync_duration_seconds_count %d\n", p, m.count, p, m.sum, p, m.count)
	for _, c := range []struct {
		name, help, typ string
		v               any
	}{
		{"rules_written_total", "Rule lines written by successful syncs.", "counter", m.rules},
		{"full_syncs_total", "Successful full syncs.", "counter", m.fullSyncs},
		{"sync_errors_total", "Failed syncs.", "counter", m.syncErrors},
		{"manifest_errors_total", "Manifest reads rejected (the last good rules stay).", "counter", m.manifestErrors},
		{"services", "Services with rules.", "gauge", m.services},
		{"endpoints", "Endpoint chains written.", "gauge", m.endpoints},
	} {
		fmt.Fprintf(w, "# HELP %s%s %s\n# TYPE %s%s %s\n%s%s %v\n", p, c.name, c.help, p, c.name, c.typ, p, c.name, c.v)
	}
}

// healthz answers 200 while the last sync succeeded, 503 otherwise.
func (m *metrics) healthz(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	ok := m.healthy
	m.mu.Unlock()
	if !ok {
		http.Error(w, "last sync failed", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}
