package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podnet/podnet/iptables"
)

func TestSchedulerCoalescesAndBacksOff(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := scheduler{minGap: time.Second, period: 30 * time.Second}
	if d := s.afterSync(t0, t0.Add(100*time.Millisecond), true); d != 30*time.Second {
		t.Fatalf("after a good sync: next in %v, want the period", d)
	}
	// A change 200 ms after the sync started waits for the min gap.
	if d, ok := s.onChange(t0.Add(200 * time.Millisecond)); !ok || d != 800*time.Millisecond {
		t.Fatalf("change inside the min gap: %v %v, want 800ms true", d, ok)
	}
	// A second change before then is already covered.
	if _, ok := s.onChange(t0.Add(300 * time.Millisecond)); ok {
		t.Fatal("second change moved the planned sync")
	}
	// Failures back off 1 s, 2 s, 4 s … up to the period; changes wait.
	for i, want := range []time.Duration{1, 2, 4, 8, 16, 30, 30} {
		now := t0.Add(time.Duration(i+2) * time.Minute)
		if d := s.afterSync(now, now, false); d != want*time.Second {
			t.Fatalf("failure %d: retry in %v, want %v", i+1, d, want*time.Second)
		}
		if _, ok := s.onChange(now.Add(time.Millisecond)); ok {
			t.Fatalf("failure %d: a change jumped the retry", i+1)
		}
	}
	now := t0.Add(time.Hour)
	s.afterSync(now, now, true)
	if d, ok := s.onChange(now.Add(5 * time.Second)); !ok || d != 0 {
		t.Fatalf("change after the min gap: %v %v, want 0 true", d, ok)
	}
}

func TestSchedulerMinGapZero(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := scheduler{period: time.Minute}
	s.afterSync(t0, t0, true)
	if d, ok := s.onChange(t0); !ok || d != 0 {
		t.Fatalf("min gap 0: %v %v, want an immediate sync", d, ok)
	}
}

// flaky is a backend whose Run fails while fail is set.
type flaky struct {
	*iptables.Fake
	fail atomic.Bool
}

func (f *flaky) Run(ctx context.Context, tx *iptables.Transaction) error {
	if f.fail.Load() {
		return errors.New("injected failure")
	}
	return f.Fake.Run(ctx, tx)
}

// runProxy starts p.Run and returns a channel of its sync results.
func runProxy(t *testing.T, p *Proxy, cfg RunConfig) <-chan SyncResult {
	t.Helper()
	results := make(chan SyncResult, 1000)
	errs := make(chan error, 1000)
	cfg.OnSync = func(r SyncResult, err error) {
		if err != nil {
			errs <- err
			r.Reason = "error: " + err.Error()
		}
		results <- r
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := p.Run(ctx, cfg); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return results
}

func next(t *testing.T, results <-chan SyncResult) SyncResult {
	t.Helper()
	select {
	case r := <-results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no sync within 10 s")
		return SyncResult{}
	}
}

func TestRunSyncsChangesAndReportsTriggers(t *testing.T) {
	p, err := New(Config{Backend: IPTables(iptables.NewFake()), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
	if err != nil {
		t.Fatal(err)
	}
	results := runProxy(t, p, RunConfig{SyncPeriod: time.Hour})
	if r := next(t, results); !r.Full || r.Reason != "start" {
		t.Fatalf("first sync %+v, want the full start sync", r)
	}
	trig := time.Now().Add(-time.Second)
	p.RecordTrigger(trig)
	if err := p.Update(web()); err != nil {
		t.Fatal(err)
	}
	r := next(t, results)
	if r.Full || r.Services != 1 || len(r.Triggers) != 1 || !r.Triggers[0].Equal(trig) {
		t.Fatalf("sync after an update: %+v, want a partial sync of 1 Service with its trigger", r)
	}
	if st := p.Status(); !st.PendingSince.IsZero() || st.LastSync.IsZero() {
		t.Fatalf("status after the sync: %+v", st)
	}
}

func TestRunCoalescesWithinMinSyncPeriod(t *testing.T) {
	p, err := New(Config{Backend: IPTables(iptables.NewFake()), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
	if err != nil {
		t.Fatal(err)
	}
	results := runProxy(t, p, RunConfig{MinSyncPeriod: 300 * time.Millisecond, SyncPeriod: time.Hour})
	next(t, results)
	const n = 40
	for i := range n {
		s := web()
		s.Name.Name = fmt.Sprintf("web-%d", i)
		s.ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 1, byte(i)})}
		s.Ports[0].NodePort = 0
		if err := p.Update(s); err != nil {
			t.Fatal(err)
		}
	}
	synced := 0
	for syncs := 0; synced < n; syncs++ {
		if syncs == 3 {
			t.Fatalf("%d quick updates took more than 2 syncs (%d Services written)", n, synced)
		}
		synced += next(t, results).Services
	}
}

func TestRunRetriesAFailedSyncAsFull(t *testing.T) {
	be := &flaky{Fake: iptables.NewFake()}
	p, err := New(Config{Backend: IPTables(be), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
	if err != nil {
		t.Fatal(err)
	}
	results := runProxy(t, p, RunConfig{SyncPeriod: time.Hour})
	next(t, results)
	be.fail.Store(true)
	if err := p.Update(web()); err != nil {
		t.Fatal(err)
	}
	if r := next(t, results); r.Reason[:6] != "error:" {
		t.Fatalf("sync with a failing backend: %+v, want an error", r)
	}
	st := p.Status()
	if st.PendingSince.IsZero() {
		t.Fatal("a failed sync left no pending change")
	}
	if st.Healthy(st.PendingSince.Add(time.Minute), 30*time.Second) {
		t.Fatal("a change pending for a minute reads healthy with a 30 s timeout")
	}
	be.fail.Store(false)
	r := next(t, results) // the retry, 1 s later
	if !r.Full || r.Reason != "previous sync failed" || r.Services != 1 {
		t.Fatalf("retry %+v, want a full sync after the failure", r)
	}
	if st := p.Status(); !st.Healthy(time.Now(), time.Second) {
		t.Fatalf("status after the retry: %+v, want healthy", st)
	}
}

// blockingPlane is a plane whose read-back check waits for release.
type blockingPlane struct {
	plane
	entered, release chan struct{}
}

func (b *blockingPlane) verifier() func() (bool, error) {
	check := b.plane.verifier()
	return func() (bool, error) {
		select {
		case b.entered <- struct{}{}:
		default:
		}
		<-b.release
		return check()
	}
}

// TestRunSyncsWhileVerifying: a change that arrives while the periodic
// read-back (Verify) runs is synced without waiting for it.
func TestRunSyncsWhileVerifying(t *testing.T) {
	p, err := New(Config{Backend: IPTables(iptables.NewFake()), NodeName: "node0", ClusterCIDRs: []netip.Prefix{podCIDR}})
	if err != nil {
		t.Fatal(err)
	}
	bp := &blockingPlane{plane: p.pl, entered: make(chan struct{}, 1), release: make(chan struct{})}
	p.pl = bp
	released := false
	release := func() {
		if !released {
			released = true
			close(bp.release)
		}
	}
	defer release() // Run waits for its check to end
	results := runProxy(t, p, RunConfig{SyncPeriod: 50 * time.Millisecond})
	if r := next(t, results); !r.Full {
		t.Fatalf("first sync %+v, want the full start sync", r)
	}
	select {
	case <-bp.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no read-back within 10 s")
	}
	if err := p.Update(web()); err != nil {
		t.Fatal(err)
	}
	for {
		r := next(t, results) // periodic syncs may come first
		if r.Services == 1 {
			break
		}
	}
	release()
}
