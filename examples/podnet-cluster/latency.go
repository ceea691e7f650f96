package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// programmingMetric is kube-proxy's network programming latency histogram,
// which podnet-service-proxy exports under the same name.
const programmingMetric = "kubeproxy_network_programming_duration_seconds"

// bucket is one cumulative histogram bucket: count observations <= le.
type bucket struct {
	le    float64
	count float64
}

// histogram is a Prometheus histogram summed over several scrapes (one per
// proxy), as sum by (le) (...) would sum it.
type histogram struct{ buckets []bucket }

// addScrape parses one /metrics page in the text format and adds its
// histogram name to h.
func (h *histogram) addScrape(r io.Reader, name string) error {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return fmt.Errorf("parse metrics: %w", err)
	}
	fam, ok := fams[name]
	if !ok || fam.GetType() != dto.MetricType_HISTOGRAM {
		return fmt.Errorf("no histogram %s in the metrics", name)
	}
	for _, m := range fam.Metric {
		hist := m.GetHistogram()
		inf := false
		for _, b := range hist.GetBucket() {
			h.add(b.GetUpperBound(), float64(b.GetCumulativeCount()))
			inf = inf || math.IsInf(b.GetUpperBound(), 1)
		}
		if !inf { // the +Inf bucket is the sample count
			h.add(math.Inf(1), float64(hist.GetSampleCount()))
		}
	}
	return nil
}

func (h *histogram) add(le, count float64) {
	for i := range h.buckets {
		if h.buckets[i].le == le {
			h.buckets[i].count += count
			return
		}
	}
	h.buckets = append(h.buckets, bucket{le, count})
}

// quantile is PromQL's histogram_quantile(q, h): find the bucket the rank
// q*count falls in and interpolate linearly inside it; a rank in the +Inf
// bucket gives the highest finite bound. NaN when h is empty.
func (h *histogram) quantile(q float64) float64 {
	bs := slices.Clone(h.buckets)
	slices.SortFunc(bs, func(a, b bucket) int {
		switch {
		case a.le < b.le:
			return -1
		case a.le > b.le:
			return 1
		}
		return 0
	})
	if len(bs) < 2 || !math.IsInf(bs[len(bs)-1].le, 1) {
		return math.NaN()
	}
	// Counts must not decrease with le (they may, summed over scrapes
	// taken at different moments); Prometheus evens them out the same way.
	for i := 1; i < len(bs); i++ {
		bs[i].count = max(bs[i].count, bs[i-1].count)
	}
	total := bs[len(bs)-1].count
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	b := sort.Search(len(bs)-1, func(i int) bool { return bs[i].count >= rank })
	if b == len(bs)-1 {
		return bs[len(bs)-2].le
	}
	if b == 0 && bs[0].le <= 0 {
		return bs[0].le
	}
	start, end, count := 0.0, bs[b].le, bs[b].count
	if b > 0 {
		start = bs[b-1].le
		count -= bs[b-1].count
		rank -= bs[b-1].count
	}
	return start + (end-start)*(rank/count)
}

// percentile returns the nearest-rank percentile q (0..1) of samples.
func percentile(samples []time.Duration, q float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// samples is the number of observations in h: its +Inf bucket.
func (h *histogram) samples() float64 {
	for _, b := range h.buckets {
		if math.IsInf(b.le, 1) {
			return b.count
		}
	}
	return 0
}
