package projector

import (
	"context"
	"runtime"
	"slices"
	"time"
)

// BusySince reports the projection whose loop has been busy the longest
// with one step (a batch, a change of slot ownership, a consumer start, a
// partition command, a retry, a saving of watermarks when idle) and
// when that step started; zero while every loop waits for work. A liveness
// check (opsserver.NotWedged) reports the projector wedged when it is too
// old.
func (p *Projector) BusySince() (projection string, since time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.runners {
		if s := r.busy.Since(); !s.IsZero() && (since.IsZero() || s.Before(since)) {
			projection, since = r.def.Name(), s
		}
	}
	return projection, since
}

// stuckAfter is how long a loop may be busy with one step before the
// projector logs it, with every goroutine's stack: half of
// OPS_WEDGED_AFTER's default, so that the log says where the loop waits
// before an orchestrator restarts the service for it.
const stuckAfter = time.Minute

// maxStackLog bounds the goroutine stacks a stuck loop's log line holds.
const maxStackLog = 256 << 10

// watchLoops logs each projection whose loop has been busy with one step
// for longer than after, once per episode, with the stacks of all
// goroutines (what the step waits on), and logs again when it moves on.
func (p *Projector) watchLoops(ctx context.Context, after time.Duration) {
	tick := time.NewTicker(max(after/6, 10*time.Millisecond))
	defer tick.Stop()
	stuck := map[*runner]time.Time{} // loops logged as stuck, by the step's start
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p.mu.Lock()
		runners := slices.Clone(p.runners)
		p.mu.Unlock()
		for _, r := range runners {
			since := r.busy.Since()
			if logged, ok := stuck[r]; ok && !since.Equal(logged) {
				r.log.Info("projection loop moving again", "stuck_for", time.Since(logged).Round(time.Second))
				delete(stuck, r)
			}
			if since.IsZero() || time.Since(since) < after {
				continue
			}
			if _, ok := stuck[r]; ok {
				continue
			}
			stuck[r] = since
			r.mu.Lock()
			state := r.status.State
			r.mu.Unlock()
			buf := make([]byte, maxStackLog)
			buf = buf[:runtime.Stack(buf, true)]
			r.log.Warn("projection loop busy with one step for long; the stacks of all goroutines follow",
				"busy_for", time.Since(since).Round(time.Second), "state", state, "stacks", string(buf))
		}
	}
}
