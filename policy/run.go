package policy

import (
	"context"
	"time"
)

// RunConfig configures Enforcer.Run. The zero value of every field is
// correct.
type RunConfig struct {
	// MinSyncPeriod is the least time between the starts of two syncs:
	// changes arriving sooner wait and are written together. 0 syncs as
	// soon as a change arrives.
	MinSyncPeriod time.Duration
	// SyncPeriod is how often Run reads the table back (Verify) and
	// repairs what someone changed in it; 0 means DefaultSyncPeriod. It
	// also bounds the wait between retries of a failed sync.
	SyncPeriod time.Duration
	// OnSync, if set, is called after every sync that did something,
	// and after every failed one, from Run's goroutine.
	OnSync func(SyncResult, error)
}

// DefaultSyncPeriod is how often Run verifies the table by default.
const DefaultSyncPeriod = 30 * time.Second

// Run syncs the enforcer until ctx is done: at once, then whenever the
// model changes (changes coalesce, and syncs start at least
// MinSyncPeriod apart), and every SyncPeriod after a Verify that repairs
// what someone changed. A failed sync is retried after 1 s, 2 s, 4 s …
// up to SyncPeriod, as a full sync. Run returns nil when ctx is done; the
// rules stay in force.
//
// Start Run once the model is loaded (for a Kubernetes source, once its
// informers have synced): its first sync writes the whole table, and
// pods the model does not know yet are not isolated by it.
func (e *Enforcer) Run(ctx context.Context, cfg RunConfig) error {
	period := cfg.SyncPeriod
	if period <= 0 {
		period = DefaultSyncPeriod
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	verify := time.NewTicker(period)
	defer verify.Stop()
	var lastStart time.Time
	retry := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-e.wake:
			if retry == 0 {
				reset(timer, time.Until(lastStart.Add(cfg.MinSyncPeriod)))
			}
			continue
		case <-verify.C:
			if ok, err := e.Verify(ctx); err != nil || !ok {
				e.log.Warn("network policy table verification failed", "ok", ok, "err", err)
			}
			continue
		case <-timer.C:
		}
		lastStart = time.Now()
		res, err := e.Sync(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if cfg.OnSync != nil && (err != nil || res.Full || res.Rules+res.Elements > 0) {
			cfg.OnSync(res, err)
		}
		if err == nil {
			retry = 0
			continue
		}
		retry = min(max(2*retry, time.Second), period)
		reset(timer, retry)
	}
}

// reset makes t fire after d (at once when d <= 0).
func reset(t *time.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	t.Reset(max(d, 0))
}
