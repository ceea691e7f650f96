package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

const scrapeText = `# HELP kubeproxy_network_programming_duration_seconds In Cluster Network Programming Latency in seconds
# TYPE kubeproxy_network_programming_duration_seconds histogram
kubeproxy_network_programming_duration_seconds_bucket{le="0.005"} 0
kubeproxy_network_programming_duration_seconds_bucket{le="0.01"} 1
kubeproxy_network_programming_duration_seconds_bucket{le="0.02"} 3
kubeproxy_network_programming_duration_seconds_bucket{le="0.04"} 4
kubeproxy_network_programming_duration_seconds_bucket{le="+Inf"} 4
kubeproxy_network_programming_duration_seconds_sum 0.07
kubeproxy_network_programming_duration_seconds_count 4
# TYPE other gauge
other 1
`

// TestHistogramQuantile: the quantiles are PromQL's histogram_quantile of
// the histogram summed over scrapes.
func TestHistogramQuantile(t *testing.T) {
	var h histogram
	for range 2 { // two proxies with the same observations
		if err := h.addScrape(strings.NewReader(scrapeText), programmingMetric); err != nil {
			t.Fatal(err)
		}
	}
	if got := h.samples(); got != 8 {
		t.Errorf("samples = %v, want 8", got)
	}
	for _, c := range []struct{ q, want float64 }{
		{0.5, 0.015},   // rank 4 of 8: in (0.01, 0.02], 2 of the bucket's 4
		{0.25, 0.01},   // rank 2: the top of the first non-empty bucket
		{0.99, 0.0392}, // rank 7.92: in (0.02, 0.04], 1.92 of its 2
		{1, 0.04},
	} {
		if got := h.quantile(c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	var inf histogram
	if err := inf.addScrape(strings.NewReader(strings.Replace(scrapeText, `{le="+Inf"} 4`, `{le="+Inf"} 10`, 1)), programmingMetric); err != nil {
		t.Fatal(err)
	}
	if got := inf.quantile(0.99); got != 0.04 { // in the +Inf bucket: the highest finite bound
		t.Errorf("quantile in +Inf bucket = %v, want 0.04", got)
	}
	var empty histogram
	if !math.IsNaN(empty.quantile(0.5)) {
		t.Error("quantile of an empty histogram is not NaN")
	}
	if err := empty.addScrape(strings.NewReader("other 1\n"), programmingMetric); err == nil {
		t.Error("no error for a scrape without the histogram")
	}
}

func TestPercentile(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	s := []time.Duration{ms(40), ms(10), ms(30), ms(20)}
	if p := percentile(s, 0.5); p != ms(20) {
		t.Errorf("p50 = %v", p)
	}
	if p := percentile(s, 0.99); p != ms(40) {
		t.Errorf("p99 = %v", p)
	}
	if p := percentile(nil, 0.5); p != 0 {
		t.Errorf("p50 of nothing = %v", p)
	}
}
