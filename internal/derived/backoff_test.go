package derived_test

import (
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/derived"
)

// A refused target waits 250 ms, then twice as long after each further
// refusal, at most 30 s, counted from the refusal.
func TestBackoff(t *testing.T) {
	var b derived.Backoff
	now := time.Now()
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second,
		8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		now = now.Add(time.Minute)
		b.Refused(now)
		if b.Wait != w || !b.Until.Equal(now.Add(w)) {
			t.Fatalf("refusal %d: wait %v until +%v; want %v", i+1, b.Wait, b.Until.Sub(now), w)
		}
	}
}
