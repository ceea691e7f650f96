package kube

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// LogUnreachable makes requests through cfg report when the API server
// cannot be reached, and when it can again. client-go's informers retry a
// refused or failed connection silently (a backing-off watch is logged at
// klog level 2 or 4 only), so without it a proxy or agent started while
// the API server is down says nothing. The first failure is logged at
// once, then one line every repeat while it lasts; the recovery once.
// No request is added.
func LogUnreachable(cfg *rest.Config, log *slog.Logger, repeat time.Duration) {
	r := &reach{log: log, repeat: repeat}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(req *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(req)
			if req.Context().Err() == nil || err == nil {
				r.observe(err)
			}
			return resp, err
		})
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

type reach struct {
	log    *slog.Logger
	repeat time.Duration
	mu     sync.Mutex
	since  time.Time // start of the current outage; zero when reachable
	logged time.Time // last line about it
	failed int       // requests failed since then
}

func (r *reach) observe(err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		if !r.since.IsZero() {
			r.log.Info("the API server is reachable again", "after", now.Sub(r.since).Round(time.Millisecond), "failed_requests", r.failed)
			r.since, r.failed = time.Time{}, 0
		}
		return
	}
	r.failed++
	if r.since.IsZero() {
		r.since = now
	} else if now.Sub(r.logged) < r.repeat {
		return
	}
	r.logged = now
	r.log.Warn("cannot reach the API server; retrying, the rules in force stay", "for", now.Sub(r.since).Round(time.Millisecond), "failed_requests", r.failed, "err", err)
}
