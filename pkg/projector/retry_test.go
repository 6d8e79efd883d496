package projector_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// gatedSource is the JetStream source whose Next (a failing partition's
// catch-up read) waits until the gate opens.
type gatedSource struct {
	*projector.JetStreamSource
	gate  chan struct{}
	calls atomic.Int32
}

func (s *gatedSource) Next(ctx context.Context, subject string, from uint64) (projection.Message, error) {
	s.calls.Add(1)
	select {
	case <-s.gate:
	case <-ctx.Done():
		return projection.Message{}, ctx.Err()
	}
	return s.JetStreamSource.Next(ctx, subject, from)
}

// newGatedSource is a closed gatedSource over b's EVENTS wallets.
func newGatedSource(t *testing.T, b *bundle) *gatedSource {
	t.Helper()
	js, err := projector.NewJetStreamSource(context.Background(), b.js, contract.EventsStream, []string{"events.wallet.*"})
	if err != nil {
		t.Fatal(err)
	}
	return &gatedSource{JetStreamSource: js, gate: make(chan struct{})}
}

// G4: a failing partition's slow catch-up read does not hold the others up.
func TestRetryReadsDoNotBlockOtherPartitions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	src := newGatedSource(t, b)
	def := walletBalance("wallet_balance", projection.FromSource(src), projection.Retries(5, 10*time.Millisecond, 20*time.Millisecond))
	b.publishWallets(t, 20, 1)
	b.publish(t, "w7", "MoneyWasWithdrawnFromWallet", `{"amount":-5}`)
	b.run(t, "r1", def)
	// w7 fails, and its retry waits in a read that does not return.
	devtest.Eventually(t, 30*time.Second, func() error {
		if src.calls.Load() == 0 {
			return fmt.Errorf("no catch-up read yet")
		}
		return nil
	})
	// Meanwhile every other wallet takes new events.
	for i := range 20 {
		if i != 7 {
			b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", `{"amount":1}`)
		}
	}
	devtest.Eventually(t, 15*time.Second, func() error {
		got := b.states(t, "wallet_balance")
		b.mu.Lock()
		defer b.mu.Unlock()
		for k, want := range b.fold {
			if k == "wallet/w7" {
				continue
			}
			var bal Balance
			_ = jsonUnmarshal(got[k].State, &bal)
			if bal != want {
				return fmt.Errorf("%s: %+v, want %+v while w7's read hangs", k, bal, want)
			}
		}
		return nil
	})
	close(src.gate)
	// The read comes back: w7 retries and parks after its attempts.
	devtest.Eventually(t, 30*time.Second, func() error {
		if r := b.states(t, "wallet_balance")["wallet/w7"]; r.Parked == nil {
			return fmt.Errorf("w7 not parked: %+v", r)
		}
		return nil
	})
}

// Options.Retries (PROJECTOR_MAX_ATTEMPTS, PROJECTOR_BACKOFF_*) overrides
// what the projection sets.
func TestRetryPolicyOverridesTheProjections(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.publishWallets(t, 5, 1)
	b.publish(t, "w2", "MoneyWasWithdrawnFromWallet", `{"amount":-5}`)
	// The projection would try 5 times, 10 minutes apart.
	def := walletBalance("wallet_balance", projection.Retries(5, 10*time.Minute, 10*time.Minute))
	b.runWith(t, projector.Options{Replica: "r1", LeaseTTL: 2 * time.Second, Logger: testLogger(t),
		Retries: projector.RetryPolicy{MaxAttempts: 2, BackoffMin: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond}}, def)
	devtest.Eventually(t, 30*time.Second, func() error {
		rec := b.states(t, "wallet_balance")["wallet/w2"]
		if rec.Parked == nil {
			return fmt.Errorf("w2 not parked: %+v", rec)
		}
		if rec.Parked.Attempts != 2 {
			return fmt.Errorf("parked after %d attempts, want 2", rec.Parked.Attempts)
		}
		return nil
	})
}

// A partition catching up (here, rebuilt) while live batches go by: its
// messages in those batches come after what its read covers, and are
// applied with it, not lost.
func TestCatchUpKeepsLiveMessagesThatArriveDuringItsRead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	src := newGatedSource(t, b)
	def := walletBalance("wallet_balance", projection.FromSource(src))
	b.publishWallets(t, 20, 2)
	b.run(t, "r1", def)
	b.waitFold(t, "wallet_balance", 30*time.Second)
	devtest.Eventually(t, 30*time.Second, func() error {
		return b.admin().RebuildPartition(ctx, def, "wallet/w3")
	})
	// w3's read hangs; its new events and others' go by meanwhile.
	devtest.Eventually(t, 30*time.Second, func() error {
		if src.calls.Load() == 0 {
			return fmt.Errorf("no catch-up read yet")
		}
		return nil
	})
	for i := range 20 {
		b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", `{"amount":1}`)
	}
	b.publish(t, "w3", "MoneyWasAddedToWallet", `{"amount":10}`)
	devtest.Eventually(t, 15*time.Second, func() error {
		got := b.states(t, "wallet_balance")
		b.mu.Lock()
		defer b.mu.Unlock()
		for k, want := range b.fold {
			var bal Balance
			_ = jsonUnmarshal(got[k].State, &bal)
			if k != "wallet/w3" && bal != want {
				return fmt.Errorf("%s: %+v, want %+v", k, bal, want)
			}
		}
		return nil
	})
	close(src.gate)
	b.waitFold(t, "wallet_balance", 30*time.Second)
}
