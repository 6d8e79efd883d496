package projector_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// A step the loop takes between batches — here a partition command whose
// hook hangs — shows in BusySince, so a liveness check can see the
// projector wedged; the loop is idle again once the step ends.
func TestBusySinceSeesAStepBetweenBatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	h := newHang()
	def := walletBalance("kv_busy", projection.OnResetPartition(h.hook))
	entered := h.entered
	b.publishWallets(t, 3, 2)
	r := b.run(t, "r1", def)
	unblock := h.unblock
	t.Cleanup(unblock) // before the projector stops, should the test fail
	b.waitFold(t, "kv_busy", 30*time.Second)
	devtest.Eventually(t, 10*time.Second, func() error {
		if name, since := r.p.BusySince(); !since.IsZero() {
			return errors.New(name + " still busy after catching up")
		}
		return nil
	})
	done := make(chan error, 1)
	go func() {
		done <- b.admin().RebuildPartition(ctx, def, "wallet/w1")
	}()
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the partition command never reached its hook")
	}
	if name, since := r.p.BusySince(); since.IsZero() || name != "kv_busy" {
		t.Fatalf("BusySince = %q, %v while a command hangs on the loop; want kv_busy busy", name, since)
	}
	unblock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b.waitFold(t, "kv_busy", 30*time.Second)
	devtest.Eventually(t, 10*time.Second, func() error {
		if name, since := r.p.BusySince(); !since.IsZero() {
			return errors.New(name + " still busy after the command")
		}
		return nil
	})
}

// A loop busy with one step for long is logged, once, with the stacks of
// the goroutines — the step's among them — and again when it moves on.
func TestStuckLoopIsLoggedWithItsStacks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	h := newHang()
	def := walletBalance("kv_stuck", projection.OnResetPartition(h.hook))
	entered := h.entered
	b.publishWallets(t, 3, 1)
	logs := &devtest.LogBuffer{}
	b.runWith(t, projector.WithStuckAfter(projector.Options{Replica: "r1", LeaseTTL: 2 * time.Second,
		Logger: slog.New(slog.NewJSONHandler(logs, nil))}, 300*time.Millisecond), def)
	unblock := h.unblock
	t.Cleanup(unblock) // before the projector stops (cleanups run last first)
	b.waitFold(t, "kv_stuck", 30*time.Second)
	done := make(chan error, 1)
	go func() { done <- b.admin().RebuildPartition(ctx, def, "wallet/w1") }()
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the partition command never reached its hook")
	}
	devtest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(logs.String(), "projection loop busy with one step for long") {
			return errors.New("no stuck-loop warning yet")
		}
		return nil
	})
	out := logs.String()
	// The hanging hook's goroutine is in the stacks.
	if !strings.Contains(out, "projector_test.(*hang).hook(") {
		t.Errorf("the warning lacks the stuck step's stack:\n%.2000s", out)
	}
	unblock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(logs.String(), "projection loop moving again") {
			return errors.New("no moving-again line yet")
		}
		return nil
	})
	if n := strings.Count(logs.String(), "projection loop busy with one step for long"); n != 1 {
		t.Errorf("stuck-loop warnings: %d, want one per episode", n)
	}
}

// hang is a partition-reset hook that blocks until unblocked: a step of the
// loop that does not end.
type hang struct {
	entered, release chan struct{}
	once             sync.Once
}

func newHang() *hang { return &hang{entered: make(chan struct{}), release: make(chan struct{})} }

func (h *hang) hook(ctx context.Context, _ pgx.Tx, _ string) error {
	close(h.entered)
	select {
	case <-h.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *hang) unblock() { h.once.Do(func() { close(h.release) }) }
