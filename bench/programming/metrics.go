package main

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// delta returns after - before for every sample: the observations made
// between two scrapes.
func delta(before, after metrics) metrics {
	d := metrics{}
	for k, v := range after {
		d[k] = v - before[k]
	}
	return d
}

// estimate is a latency quantile in seconds. atMost marks a quantile in
// a histogram's lowest bucket, of which only the bound is known: from 0 to
// kube-proxy's 0.25 s, interpolation would report an eighth of a second
// for anything faster.
type estimate struct {
	v      float64
	atMost bool
}

// String is the estimate in milliseconds, "<=250" for a bound.
func (e estimate) String() string {
	if e.atMost {
		return fmt.Sprintf("<=%.0f", e.v*1e3)
	}
	return fmt.Sprintf("%.1f", e.v*1e3)
}

// quantile estimates the q-quantile of histogram name as Prometheus'
// histogram_quantile does, linear interpolation inside the bucket that
// holds it, except in the lowest bucket, where it gives the bound.
func (m metrics) quantile(name string, q float64) estimate {
	v, atMost := m.interpolate(name, q)
	return estimate{v, atMost}
}

func (m metrics) interpolate(name string, q float64) (float64, bool) {
	type bucket struct{ le, count float64 }
	var bs []bucket
	for k, v := range m {
		le, ok := strings.CutPrefix(k, name+`_bucket{le="`)
		if !ok {
			continue
		}
		le = strings.TrimSuffix(le, `"}`)
		b := math.Inf(1)
		if le != "+Inf" {
			var err error
			if b, err = strconv.ParseFloat(le, 64); err != nil {
				continue
			}
		}
		bs = append(bs, bucket{b, v})
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	if len(bs) == 0 || bs[len(bs)-1].count == 0 {
		return math.NaN(), false
	}
	rank := q * bs[len(bs)-1].count
	lo, below := 0.0, 0.0
	for _, b := range bs {
		if b.count >= rank {
			switch {
			case math.IsInf(b.le, 1):
				return lo, false
			case lo <= 0: // the lowest bucket (kube-proxy's has a le="0" below it)
				return b.le, true
			case b.count == below:
				return b.le, false
			}
			return lo + (b.le-lo)*(rank-below)/(b.count-below), false
		}
		lo, below = b.le, b.count
	}
	return lo, false
}
