package policy

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestWaitSynced: WaitSynced returns at once when every change is
// written, waits for the sync that writes a change made before the call,
// and when nothing writes it, ends with its context, naming the failure
// of the last sync.
func TestWaitSynced(t *testing.T) {
	e, _ := recorded(t)
	ctx := context.Background()
	must(t, e.WaitSynced(ctx)) // nothing changed
	web := Pod{Name: Name{"x", "web"}, IPs: []netip.Addr{netip.MustParseAddr("10.244.0.5")}, Local: true}
	must(t, e.UpdatePod(web))
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := e.WaitSynced(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("no sync: WaitSynced = %v, want DeadlineExceeded", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- e.WaitSynced(ctx) }()
	select {
	case err := <-waited:
		t.Fatalf("WaitSynced returned %v before any sync", err)
	case <-time.After(20 * time.Millisecond): // long enough to see it block
	}
	_, err := e.Sync(ctx)
	must(t, err)
	must(t, <-waited)
	must(t, e.WaitSynced(ctx)) // written: at once

	broken, err := New(Config{dial: func() (nftConn, error) { return nil, errors.New("no netlink") }})
	must(t, err)
	must(t, broken.UpdatePod(web))
	if _, err := broken.Sync(ctx); err == nil {
		t.Fatal("sync without a socket succeeded")
	}
	short, cancel = context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	err = broken.WaitSynced(short)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no netlink") {
		t.Errorf("WaitSynced after a failed sync = %v, want DeadlineExceeded naming the sync's error", err)
	}
}
