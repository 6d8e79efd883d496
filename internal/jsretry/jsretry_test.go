package jsretry_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/jsretry"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func TestTransient(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{nats.ErrNoResponders, true},
		{fmt.Errorf("registry: %w", nats.ErrTimeout), true},
		{fmt.Errorf("lease: %w", context.DeadlineExceeded), true},
		{jetstream.ErrNoStreamResponse, true},
		{&jetstream.APIError{ErrorCode: 10008, Code: 503, Description: "JetStream system temporarily unavailable"}, true},
		{fmt.Errorf("x: %w", &jetstream.APIError{ErrorCode: 10118, Code: 500}), true},
		{jetstream.ErrStreamNotFound, false},
		{jetstream.ErrKeyExists, false},
		{&jetstream.APIError{ErrorCode: 10058, Code: 400}, false},
		{nats.ErrConnectionClosed, false},
		{errors.Join(nats.ErrTimeout, nats.ErrConnectionClosed), false},
		{errors.New("boom"), false},
	} {
		if got := jsretry.Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestBackoffGrowsWithJitter(t *testing.T) {
	t.Parallel()
	b := jsretry.Backoff{Min: 100 * time.Millisecond, Max: 800 * time.Millisecond}
	nominal := []time.Duration{100, 200, 400, 800, 800, 800}
	seen := map[time.Duration]bool{}
	for i, n := range nominal {
		n *= time.Millisecond
		d := b.Next()
		seen[d] = true
		if d < n/2 || d > n {
			t.Errorf("wait %d: %v, want between %v and %v", i, d, n/2, n)
		}
	}
	if len(seen) < 3 {
		t.Errorf("waits %v: no jitter", seen)
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Errorf("after Reset: %v, want at most 100ms", d)
	}
}

// TestDoWaitsOutAServerRestart: creating a stream while the server is down
// is retried until the server is back; readiness fails meanwhile and the
// episode is logged once at its start and once at its end.
func TestDoWaitsOutAServerRestart(t *testing.T) {
	t.Parallel()
	n := devtest.NATS(t)
	nc, js := devtest.Connect(t, n)
	var logs devtest.LogBuffer
	r := jsretry.New(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))).
		WithBackoff(10*time.Millisecond, 50*time.Millisecond)
	ctx := jsretry.NewContext(t.Context(), r)

	n.Shutdown()
	devtest.Eventually(t, 10*time.Second, func() error {
		if nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	done := make(chan error, 1)
	go func() {
		done <- jsretry.Do(ctx, "create stream S", func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}})
			return err
		})
	}()
	devtest.Eventually(t, 10*time.Second, func() error {
		if err := r.Check(t.Context()); err == nil || !strings.Contains(err.Error(), "create stream S") {
			return fmt.Errorf("readiness: %v, want a failure naming the operation", err)
		}
		return nil
	})
	select {
	case err := <-done:
		t.Fatalf("Do returned %v while the server is down", err)
	default:
	}
	if err := n.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Do still retrying 20s after the server came back")
	}
	if err := r.Check(t.Context()); err != nil {
		t.Errorf("readiness after recovery: %v", err)
	}
	out := logs.String()
	if w, i := strings.Count(out, "JetStream unavailable"), strings.Count(out, "JetStream available again"); w != 1 || i != 1 {
		t.Errorf("logged %d warnings and %d recoveries, want one each:\n%s", w, i, out)
	}
}

// TestDoStopsAtPermanentErrors: an error that is not transient ends Do at
// once, without an episode.
func TestDoStopsAtPermanentErrors(t *testing.T) {
	t.Parallel()
	n := devtest.NATS(t)
	_, js := devtest.Connect(t, n)
	r := jsretry.New(nil)
	calls := 0
	_, err := jsretry.Value(jsretry.NewContext(t.Context(), r), "open stream missing", func(ctx context.Context) (jetstream.Stream, error) {
		calls++
		return js.Stream(ctx, "MISSING")
	})
	if !errors.Is(err, jetstream.ErrStreamNotFound) || calls != 1 {
		t.Errorf("got %v after %d calls, want ErrStreamNotFound after 1", err, calls)
	}
	if err := r.Check(t.Context()); err != nil {
		t.Errorf("readiness: %v", err)
	}
}

// TestValueSettlingWaitsForAStreamJustCreated: on a cluster a stream just
// created may be "not found" for a moment; ValueSettling asks again, where
// Value takes the answer.
func TestValueSettlingWaitsForAStreamJustCreated(t *testing.T) {
	t.Parallel()
	n := devtest.NATS(t)
	_, js := devtest.Connect(t, n)
	ctx := jsretry.NewContext(t.Context(), jsretry.New(nil).WithBackoff(10*time.Millisecond, 20*time.Millisecond))
	calls := 0
	s, err := jsretry.ValueSettling(ctx, "open stream LATE", func(ctx context.Context) (jetstream.Stream, error) {
		if calls++; calls == 3 {
			// Created by somebody else while we asked.
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "LATE", Subjects: []string{"late"}}); err != nil {
				return nil, err
			}
		}
		return js.Stream(ctx, "LATE")
	})
	if err != nil || s == nil || calls != 3 {
		t.Fatalf("got %v after %d calls, want the stream after 3", err, calls)
	}
	_, err = jsretry.Value(ctx, "open stream GONE", func(ctx context.Context) (jetstream.Stream, error) {
		return js.Stream(ctx, "GONE")
	})
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("Value: %v, want ErrStreamNotFound at once", err)
	}
}
