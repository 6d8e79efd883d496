package projector_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projection"
)

// A step the loop takes between batches — here a partition command whose
// hook hangs — shows in BusySince, so a liveness check can see the
// projector wedged; the loop is idle again once the step ends.
func TestBusySinceSeesAStepBetweenBatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	entered, release := make(chan struct{}), make(chan struct{})
	def := walletBalance("kv_busy", projection.OnResetPartition(func(ctx context.Context, _ pgx.Tx, _ string) error {
		close(entered)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}))
	b.publishWallets(t, 3, 2)
	r := b.run(t, "r1", def)
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
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
