package opsserver

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// Busy records whether a run loop is working on a step or waiting, so that
// liveness can tell a loop that waits for work from one that is stuck in a
// step. The zero value is idle. Its methods are safe for concurrent use and
// cost one clock read and one atomic store.
type Busy struct{ since atomic.Int64 }

// Start marks the start of a step.
func (b *Busy) Start() { b.since.Store(time.Now().UnixNano()) }

// Stop marks the loop waiting (for work, a timer, a lease).
func (b *Busy) Stop() { b.since.Store(0) }

// Since is when the current step started; zero when the loop waits.
func (b *Busy) Since() time.Time {
	n := b.since.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// NotWedged is a liveness check that fails when since reports a step that
// started more than after ago. since returns what is busy (for the message)
// and when it started, zero when nothing is.
func NotWedged(after time.Duration, since func() (what string, started time.Time)) Check {
	return func(context.Context) error {
		what, started := since()
		if started.IsZero() {
			return nil
		}
		if d := time.Since(started); d > after {
			return &PublicError{Err: fmt.Errorf("wedged: %s busy for %v (OPS_WEDGED_AFTER %v)", what, d.Round(time.Second), after)}
		}
		return nil
	}
}
