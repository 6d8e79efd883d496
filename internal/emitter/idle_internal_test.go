package emitter

import (
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/derived"
)

// The relay waits the poll interval, or until the next stalled subject is
// due; a subject the last round already read does not make it spin, one
// that came due since is read at once.
func TestIdleWait(t *testing.T) {
	now := time.Now()
	e := &relayer{Emitter: &Emitter{cfg: Config{PollInterval: time.Second}}, stalls: map[string]*stall{}, readAt: now.Add(-time.Second)}
	if got := e.idleWait(now); got != time.Second {
		t.Fatalf("no stalls: wait %v; want the poll interval", got)
	}
	e.stalls["a"] = &stall{Backoff: derived.Backoff{Until: now.Add(-2 * time.Second)}}
	if got := e.idleWait(now); got != time.Second {
		t.Fatalf("a stall due before the last read: wait %v; want the poll interval", got)
	}
	e.stalls["b"] = &stall{Backoff: derived.Backoff{Until: now.Add(300 * time.Millisecond)}}
	e.stalls["c"] = &stall{Backoff: derived.Backoff{Until: now.Add(600 * time.Millisecond)}}
	if got := e.idleWait(now); got != 300*time.Millisecond {
		t.Fatalf("stalls due in 300 and 600 ms: wait %v; want 300ms", got)
	}
	e.stalls["d"] = &stall{Backoff: derived.Backoff{Until: now.Add(-time.Millisecond)}}
	if got := e.idleWait(now); got != 0 {
		t.Fatalf("a stall that came due since the last read: wait %v; want 0", got)
	}
}
