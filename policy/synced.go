package policy

import (
	"context"
	"fmt"
)

// commits counts the model's changes and those a successful sync has
// written, so that a caller can wait until its own change is in force.
type commits struct {
	changed, written uint64        // changes made; changes the last successful sync wrote
	signal           chan struct{} // closed, and replaced, when written grows
	failed           error         // the last sync's error; nil once one succeeds
}

func newCommits() commits { return commits{signal: make(chan struct{})} }

// done records that a successful sync wrote the changes up to gen.
func (c *commits) done(gen uint64) {
	c.failed = nil
	if gen > c.written {
		c.written = gen
		close(c.signal)
		c.signal = make(chan struct{})
	}
}

// WaitSynced waits until a successful Sync has written every change made
// to the model before the call — the change is in force in the kernel —
// and returns nil; at once when there is none. Something must be syncing
// (Run, or calls to Sync). When ctx ends first it returns ctx's error,
// with the last sync's error if that sync failed.
func (e *Enforcer) WaitSynced(ctx context.Context) error {
	e.mu.Lock()
	want := e.commits.changed
	for e.commits.written < want {
		signal := e.commits.signal
		e.mu.Unlock()
		select {
		case <-signal:
		case <-ctx.Done():
			e.mu.Lock()
			failed := e.commits.failed
			e.mu.Unlock()
			if failed != nil {
				return fmt.Errorf("%w (the last network policy sync failed: %v)", context.Cause(ctx), failed)
			}
			return context.Cause(ctx)
		}
		e.mu.Lock()
	}
	e.mu.Unlock()
	return nil
}
