package projectorsvc

import (
	"testing"
	"time"
)

func TestBar(t *testing.T) {
	for _, c := range []struct {
		pos, head uint64
		want      string
	}{
		{0, 100, "[··········]"},
		{50, 100, "[#####·····]"},
		{100, 100, "[##########]"},
		{120, 100, "[##########]"},
		{0, 0, "[##########]"},
	} {
		if got := bar(c.pos, c.head, 10); got != c.want {
			t.Errorf("bar(%d, %d) = %q, want %q", c.pos, c.head, got, c.want)
		}
	}
}

func TestRate(t *testing.T) {
	var r rate
	t0 := time.Unix(1000, 0)
	r.add(t0, 100)
	if got := r.describe(900); got != "rate …" {
		t.Fatalf("one reading: %q", got)
	}
	r.add(t0.Add(2*time.Second), 300) // 100/s
	if got, want := r.describe(1000), "100 msg/s, ETA 10s"; got != want {
		t.Fatalf("describe = %q, want %q", got, want)
	}
	if got, want := r.describe(0), "100 msg/s"; got != want {
		t.Fatalf("caught up: %q, want %q", got, want)
	}
	// Readings older than the window are forgotten: the rate follows the
	// last ten seconds.
	r.add(t0.Add(20*time.Second), 300)
	if got, want := r.describe(10), "0 msg/s, ETA ∞"; got != want {
		t.Fatalf("stalled: %q, want %q", got, want)
	}
}
