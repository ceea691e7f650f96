package service

import (
	"context"
	"time"
)

// RunConfig configures Proxy.Run. The zero value of every field is
// correct.
type RunConfig struct {
	// MinSyncPeriod is the least time between the starts of two syncs:
	// changes arriving sooner wait and are written together. 0 syncs as
	// soon as a change arrives (kube-proxy's --min-sync-period).
	MinSyncPeriod time.Duration
	// SyncPeriod is how often Run syncs when nothing changes, so that
	// rules flushed by someone else come back (the canary check turns
	// that sync into a full one); 0 means DefaultSyncPeriod. It also
	// bounds the wait between retries of a failed sync.
	SyncPeriod time.Duration
	// FullSyncPeriod is how often Run makes a full sync even when the
	// tables read back as written: 0 means DefaultFullSyncPeriod.
	FullSyncPeriod time.Duration
	// OnSync, if set, is called after every sync with its result, from
	// Run's goroutine: for metrics and logs.
	OnSync func(SyncResult, error)
}

// DefaultSyncPeriod is kube-proxy's default --sync-period.
const DefaultSyncPeriod = 30 * time.Second

// DefaultFullSyncPeriod is how often kube-proxy rewrites everything it
// owns whatever else happens: an hour.
const DefaultFullSyncPeriod = time.Hour

// firstRetry is the wait after the first failed sync; each further failure
// doubles it, up to the sync period.
const firstRetry = time.Second

// Run syncs the proxy until ctx is done: at once, then whenever Update,
// Delete, Replace or RecordTrigger report a change (changes coalesce, and
// syncs start at least MinSyncPeriod apart), and every SyncPeriod. A failed
// sync is retried after 1 s, 2 s, 4 s … up to SyncPeriod; the retry is a
// full sync. Every SyncPeriod it also reads the tables back (Verify), and
// repairs with a full sync what someone changed in them; every
// FullSyncPeriod it makes a full sync anyway. Run returns nil when ctx is
// done; the rules stay in force.
//
// Start Run once the Services are loaded (for a Kubernetes source, once
// its informers have synced): its first sync is a full one, and it removes
// the rules of every Service the proxy does not know.
func (p *Proxy) Run(ctx context.Context, cfg RunConfig) error {
	period := cfg.SyncPeriod
	if period <= 0 {
		period = DefaultSyncPeriod
	}
	fullPeriod := cfg.FullSyncPeriod
	if fullPeriod <= 0 {
		fullPeriod = DefaultFullSyncPeriod
	}
	s := scheduler{minGap: cfg.MinSyncPeriod, period: period}
	// The tables are read back on a goroutine of their own: at 10k
	// Services a Verify takes a few hundred milliseconds, which changes
	// arriving meanwhile must not wait for.
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		p.checkLoop(ctx, period, fullPeriod)
	}()
	defer func() { <-checked }()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.changed:
			if d, ok := s.onChange(time.Now()); ok {
				resetTimer(timer, d)
			}
		case <-timer.C:
			start := time.Now()
			res, err := p.Sync(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if cfg.OnSync != nil {
				cfg.OnSync(res, err)
			}
			resetTimer(timer, s.afterSync(start, time.Now(), err == nil))
		}
	}
}

// checkLoop runs checkTables every period until ctx is done.
func (p *Proxy) checkLoop(ctx context.Context, period, fullPeriod time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.checkTables(ctx, fullPeriod)
		}
	}
}

// checkTables makes the next sync a full one when the last full sync is
// fullPeriod old, or when the tables no longer hold what was written.
func (p *Proxy) checkTables(ctx context.Context, fullPeriod time.Duration) {
	p.mu.Lock()
	due := !p.lastFull.IsZero() && time.Since(p.lastFull) >= fullPeriod
	fresh := p.lastFull.IsZero() || p.fullReason != ""
	p.mu.Unlock()
	switch {
	case due:
		p.requestFull("periodic")
	case !fresh:
		if _, err := p.Verify(ctx); err != nil {
			p.log.Warn("verify failed", "err", err)
		}
	}
}

// scheduler decides when Run's next sync starts.
type scheduler struct {
	minGap, period time.Duration
	lastStart      time.Time     // start of the last sync
	retry          time.Duration // current backoff; 0 after a success
	next           time.Time     // when the timer fires
}

// afterSync returns the wait until the next sync after one that started at
// start and ended at now: a retry after a failure, else the periodic one.
func (s *scheduler) afterSync(start, now time.Time, ok bool) time.Duration {
	s.lastStart = start
	wait := s.period
	if ok {
		s.retry = 0
	} else {
		s.retry = min(max(2*s.retry, firstRetry), s.period)
		wait = s.retry
	}
	s.next = now.Add(wait)
	return wait
}

// onChange returns the wait until a sync that writes a change arriving at
// now, and whether it is sooner than the one already planned. While a
// failed sync waits for its retry, changes wait for it too.
func (s *scheduler) onChange(now time.Time) (time.Duration, bool) {
	at := now
	if s.retry > 0 {
		return 0, false
	}
	if !s.lastStart.IsZero() {
		at = maxTime(at, s.lastStart.Add(s.minGap))
	}
	if !s.next.IsZero() && !at.Before(s.next) {
		return 0, false
	}
	s.next = at
	return at.Sub(now), true
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// resetTimer makes t fire after d. Since Go 1.23 a stopped or reset
// timer delivers no stale tick.
func resetTimer(t *time.Timer, d time.Duration) { t.Reset(d) }
