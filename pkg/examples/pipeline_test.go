package examples_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// TestOrderFulfilmentAnyArrivalOrder appends orders whose three events
// arrive in each of the six orders (each applied before the next is
// appended), orders missing a step, and many orders whose steps are
// interleaved and appended concurrently while two replicas share the work,
// one of them crashes and a third joins: each completed order gives exactly one
// OrderFullyCompleted, with customer, total and carrier, on
// project.order_fulfilment.> and on completed_orders; incomplete orders give
// none.
func TestOrderFulfilmentAnyArrivalOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.project(t, "r1", examples.OrderFulfilment(b.pool))
	kill2 := b.projectCrashing(t, "r2", examples.OrderFulfilment(b.pool))

	// want is the test's own expectation: the completed orders' events.
	want := map[string]examples.OrderFullyCompleted{}
	completes := func(o examples.Order) {
		want[o.ID] = examples.OrderFullyCompleted{OrderID: o.ID, Customer: o.Customer, Total: o.Total, Carrier: o.Carrier}
	}

	for i, steps := range examples.ArrivalOrders() {
		o := examples.Order{ID: fmt.Sprintf("perm-%d", i), Customer: fmt.Sprintf("customer-%d", i), Total: int64(1000 * (i + 1)), Carrier: "dhl"}
		for k := range steps {
			if err := examples.AppendOrderFlow(ctx, b.pool, o, steps[k]); err != nil {
				t.Fatal(err)
			}
			devtest.Eventually(t, 20*time.Second, func() error { return orderHas(ctx, b.pool, o.ID, steps[:k+1]) })
		}
		completes(o)
	}
	// Every proper subset of the steps: never completed.
	for i, steps := range [][]examples.OrderStep{
		{examples.StepPlaced}, {examples.StepPaid}, {examples.StepDelivered},
		{examples.StepPlaced, examples.StepPaid}, {examples.StepDelivered, examples.StepPlaced}, {examples.StepPaid, examples.StepDelivered},
	} {
		o := examples.Order{ID: fmt.Sprintf("part-%d", i), Customer: "globex", Total: 500, Carrier: "ups"}
		if err := examples.AppendOrderFlow(ctx, b.pool, o, steps...); err != nil {
			t.Fatal(err)
		}
	}

	// Interleaved: the steps of 300 orders shuffled together, one in five
	// missing a step, appended by four writers at once.
	type step struct {
		o examples.Order
		s examples.OrderStep
	}
	rng := rand.New(rand.NewPCG(4, 2))
	var steps []step
	for i := range 300 {
		o := examples.Order{ID: fmt.Sprintf("mix-%d", i), Customer: []string{"acme", "globex", "initech"}[i%3],
			Total: int64(100 * (1 + rng.IntN(1000))), Carrier: []string{"dhl", "ups", "fedex"}[i%3]}
		missing := examples.OrderStep("")
		if i%5 == 0 {
			missing = examples.OrderSteps[rng.IntN(3)]
		} else {
			completes(o)
		}
		for _, s := range examples.OrderSteps {
			if s != missing {
				steps = append(steps, step{o, s})
			}
		}
	}
	rng.Shuffle(len(steps), func(i, j int) { steps[i], steps[j] = steps[j], steps[i] })
	appendAll := func(steps []step) {
		t.Helper()
		work := make(chan step)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for s := range work {
					if err := examples.AppendOrderFlow(ctx, b.pool, s.o, s.s); err != nil {
						t.Error(err)
					}
				}
			})
		}
		for _, s := range steps {
			work <- s
		}
		close(work)
		wg.Wait()
	}
	half := len(steps) / 2
	appendAll(steps[:half])
	kill2() // its leases expire, its slots move to r1, then are shared with r3
	b.project(t, "r3", examples.OrderFulfilment(b.pool))
	appendAll(steps[half:])

	devtest.Eventually(t, 60*time.Second, func() error {
		if err := examplecheck.Verify(ctx, b.pool, b.js, examples.OrderFulfilmentName); err != nil {
			return err
		}
		if err := outboxEmpty(ctx, b.pool); err != nil {
			return err
		}
		return examplecheck.VerifyDerived(ctx, b.pool, b.js, examples.OrderFulfilmentName)
	})

	// The reference the checks above compare with is the test's own.
	events, err := examplecheck.ReadAllEvents(ctx, b.pool)
	if err != nil {
		t.Fatal(err)
	}
	expected, err := examplecheck.ExpectedCompletedOrders(events)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(expected, want) {
		t.Fatalf("ExpectedCompletedOrders gives %d orders, the test completed %d", len(expected), len(want))
	}
	// And the streams, read here once more: one event per completed order,
	// on the subject of the partition that completed it.
	for _, stream := range []string{contract.ProjectionStream(examples.OrderFulfilmentName), examples.CompletedOrdersStream} {
		got := completedOn(t, b.js, stream)
		if len(got) != len(want) {
			t.Fatalf("%s: %d OrderFullyCompleted, want %d", stream, len(got), len(want))
		}
		for id, w := range want {
			if g := got[id]; len(g) != 1 || g[0] != w {
				t.Fatalf("%s: order %s: %+v, want once %+v", stream, id, g, w)
			}
		}
	}
}

// projectCrashing runs a projector replica whose kill cuts its NATS
// connection before stopping it, as a crash would: it releases no lease,
// its batch in flight fails or commits, and its slots move when the leases
// expire.
func (b *bundle) projectCrashing(t *testing.T, replica string, defs ...projection.Definer) (kill func()) {
	t.Helper()
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	p, err := projector.New(nc, projector.Options{Replica: replica, LeaseTTL: 2 * time.Second, Logger: testLogger(t, replica)}, defs...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Run(ctx) // fails once its connection is gone: that is the point
	}()
	var once sync.Once
	kill = func() {
		once.Do(func() {
			nc.Close()
			cancel()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Errorf("projector %s did not end within 20s of its crash", replica)
			}
		})
	}
	t.Cleanup(kill)
	return kill
}

// orderHas checks that order id's row holds exactly the given steps, and is
// completed when it holds all three.
func orderHas(ctx context.Context, pool *pgxpool.Pool, id string, steps []examples.OrderStep) error {
	rows, err := examplecheck.ReadOrders(ctx, pool)
	if err != nil {
		return err
	}
	r := rows[id]
	want := examplecheck.OrderRow{OrderID: id, Placed: slices.Contains(steps, examples.StepPlaced),
		Paid: slices.Contains(steps, examples.StepPaid), Delivered: slices.Contains(steps, examples.StepDelivered)}
	got := examplecheck.OrderRow{OrderID: r.OrderID, Placed: r.Placed, Paid: r.Paid, Delivered: r.Delivered}
	if got != want || r.Completed != (len(steps) == 3) {
		return fmt.Errorf("order %s after %v: %+v", id, steps, r)
	}
	return nil
}

// completedOn reads the OrderFullyCompleted events of a stream by order id.
func completedOn(t *testing.T, js jetstream.JetStream, stream string) map[string][]examples.OrderFullyCompleted {
	t.Helper()
	msgs, err := examplecheck.ReadDerived(context.Background(), js, stream)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]examples.OrderFullyCompleted{}
	for _, m := range msgs {
		var e examples.OrderFullyCompleted
		if err := json.Unmarshal(m.Data, &e); err != nil || m.Type != examples.TypeOrderFullyCompleted {
			t.Fatalf("%s: %s %s %s (%v)", stream, m.Subject, m.Type, m.Data, err)
		}
		out[e.OrderID] = append(out[e.OrderID], e)
	}
	return out
}

func outboxEmpty(ctx context.Context, pool *pgxpool.Pool) error {
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%d derived events still in the outbox", n)
	}
	return nil
}

// wallets appends wallet events one at a time, each after wallet_balance
// published the balance of the one before, so that each gives its own
// WalletBalanceWasChanged.
type wallets struct {
	b       *bundle
	balance map[string]int64
}

func (w *wallets) change(t *testing.T, id string, delta int64) {
	t.Helper()
	ctx := context.Background()
	var evs []eventstore.NewEvent
	if _, ok := w.balance[id]; !ok {
		evs = append(evs, eventstore.NewEvent{Type: examples.TypeWalletOpened, Payload: examples.WalletOpened{Owner: "test"}})
	}
	switch {
	case delta > 0:
		evs = append(evs, eventstore.NewEvent{Type: examples.TypeMoneyWasAddedToWallet, Payload: examples.MoneyWasAddedToWallet{Amount: delta}})
	case delta < 0:
		evs = append(evs, eventstore.NewEvent{Type: examples.TypeMoneyWasWithdrawnFromWallet, Payload: examples.MoneyWasWithdrawnFromWallet{Amount: -delta}})
	}
	if _, err := eventstore.Append(ctx, w.b.pool, "wallet", id, eventstore.ExpectAny, evs...); err != nil {
		t.Fatal(err)
	}
	w.balance[id] += delta
	want := w.balance[id]
	devtest.Eventually(t, 20*time.Second, func() error {
		changes, err := examplecheck.ReadBalanceChanges(ctx, w.b.js)
		if err != nil {
			return err
		}
		for _, c := range slices.Backward(changes) {
			if c.WalletID == id {
				if c.Balance != want {
					return fmt.Errorf("%s: last balance published %d, want %d", id, c.Balance, want)
				}
				return nil
			}
		}
		return fmt.Errorf("%s: no balance published", id)
	})
}

// highValueOn reads the balances of the WalletBecameHighValue events of
// high_value_wallets' stream by wallet, and checks their subjects.
func highValueOn(t *testing.T, js jetstream.JetStream) map[string][]int64 {
	t.Helper()
	msgs, err := examplecheck.ReadDerived(context.Background(), js, contract.ProjectionStream(examples.HighValueWalletsName))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]int64{}
	for _, m := range msgs {
		var e examples.WalletBecameHighValue
		if err := json.Unmarshal(m.Data, &e); err != nil || m.Type != examples.TypeWalletBecameHighValue {
			t.Fatalf("%s %s %s (%v)", m.Subject, m.Type, m.Data, err)
		}
		if want := "project.high_value_wallets.wallet." + e.WalletID; m.Subject != want {
			t.Fatalf("subject %s, want %s", m.Subject, want)
		}
		out[e.WalletID] = append(out[e.WalletID], e.Balance)
	}
	return out
}

// TestHighValueWallets feeds high_value_wallets from a running
// wallet_balance and emitter: a wallet becomes of high value each time its
// published balance reaches 100000 from below, exactly once per crossing.
func TestHighValueWallets(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.project(t, "wb", examples.WalletBalance(b.pool))
	waitStream(t, b.js, contract.ProjectionStream(examples.WalletBalanceName))
	b.project(t, "hv", examples.HighValueWallets(b.pool))

	w := &wallets{b: b, balance: map[string]int64{}}
	for _, c := range []struct {
		id    string
		delta int64
	}{
		{"a", 60000}, {"a", 50000}, // 110000: becomes of high value
		{"a", 10000},                // 120000: still
		{"b", 99999},                // never reaches it
		{"a", -30000}, {"a", 10000}, // 90000, then exactly 100000: again
		{"c", 250000},       // at once
		{"a", -1}, {"a", 1}, // below by a cent, and back
		{"c", -200000}, // c falls below
	} {
		w.change(t, c.id, c.delta)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		if err := examplecheck.Verify(ctx, b.pool, b.js, examples.WalletBalanceName, examples.HighValueWalletsName); err != nil {
			return err
		}
		if err := outboxEmpty(ctx, b.pool); err != nil {
			return err
		}
		return examplecheck.VerifyDerived(ctx, b.pool, b.js, examples.HighValueWalletsName)
	})
	if got, want := fmt.Sprint(highValueOn(t, b.js)), "map[a:[110000 100000 100000] c:[250000]]"; got != want {
		t.Fatalf("WalletBecameHighValue %s, want %s", got, want)
	}
	rows, err := examplecheck.ReadHighValueWallets(ctx, b.pool)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(rows), "map[a:{a 100000 true 3} b:{b 99999 false 0} c:{c 50000 false 1}]"; got != want {
		t.Fatalf("high_value_wallets %s, want %s", got, want)
	}
}

// TestPipelineStageFailure breaks high_value_wallets (its table disappears,
// so every batch fails) and later stops it, while wallet_balance keeps
// running and publishing; after the fix, and after a restart, it resumes
// from its positions: each crossing is emitted exactly once, those that
// happened while it was down included.
func TestPipelineStageFailure(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	ctx := context.Background()
	hv := func() projection.Definer {
		return examples.HighValueWallets(b.pool, projection.Retries(1000, 20*time.Millisecond, 200*time.Millisecond))
	}
	b.project(t, "wb", examples.WalletBalance(b.pool))
	waitStream(t, b.js, contract.ProjectionStream(examples.WalletBalanceName))
	stopHV := b.project(t, "hv1", hv())
	settled := func() error {
		if err := examplecheck.Verify(ctx, b.pool, b.js, examples.WalletBalanceName, examples.HighValueWalletsName); err != nil {
			return err
		}
		if err := outboxEmpty(ctx, b.pool); err != nil {
			return err
		}
		return examplecheck.VerifyDerived(ctx, b.pool, b.js, examples.HighValueWalletsName)
	}
	b.write(t, 1500)
	devtest.Eventually(t, 45*time.Second, settled)
	w := &wallets{b: b, balance: map[string]int64{}}

	// The stage fails: its batches cannot write.
	exec(t, b.pool, `ALTER TABLE high_value_wallets RENAME TO high_value_wallets_away`)
	w.change(t, "fail-x", 150000) // wallet_balance publishes it …
	b.write(t, 500)
	devtest.Eventually(t, 30*time.Second, func() error {
		return examplecheck.Verify(ctx, b.pool, b.js, examples.WalletBalanceName) // … and keeps running
	})
	devtest.Eventually(t, 20*time.Second, func() error {
		var failing bool
		err := b.pool.QueryRow(ctx, `SELECT failing IS NOT NULL FROM jetproj.partitions
WHERE projection = 'high_value_wallets' AND partition = 'wallet/fail-x'`).Scan(&failing)
		if err != nil || !failing {
			return fmt.Errorf("wallet/fail-x of high_value_wallets not failing (%v)", err)
		}
		return nil
	})
	if got := highValueOn(t, b.js)["fail-x"]; len(got) != 0 {
		t.Fatalf("fail-x emitted %v while its stage failed", got)
	}

	// Fixed: the failing partitions retry from their positions.
	exec(t, b.pool, `ALTER TABLE high_value_wallets_away RENAME TO high_value_wallets`)
	devtest.Eventually(t, 45*time.Second, settled)
	if got := fmt.Sprint(highValueOn(t, b.js)["fail-x"]); got != "[150000]" {
		t.Fatalf("fail-x emitted %s, want [150000]", got)
	}

	// Stopped: wallet_balance goes on alone; a new replica resumes.
	stopHV()
	w.change(t, "stop-y", 200000)
	b.write(t, 500)
	devtest.Eventually(t, 30*time.Second, func() error {
		return examplecheck.Verify(ctx, b.pool, b.js, examples.WalletBalanceName)
	})
	if rows, err := examplecheck.ReadHighValueWallets(ctx, b.pool); err != nil || rows["stop-y"] != (examplecheck.HighValueRow{}) {
		t.Fatalf("stop-y handled while its stage was stopped: %+v (%v)", rows["stop-y"], err)
	}
	b.project(t, "hv2", hv())
	devtest.Eventually(t, 45*time.Second, settled)
	if got := fmt.Sprint(highValueOn(t, b.js)["stop-y"]); got != "[200000]" {
		t.Fatalf("stop-y emitted %s, want [200000]", got)
	}
}

// waitStream waits for a stream: a projection reading another one's
// derived events starts once that one was initialised (and created its
// stream); a projector running both initialises them in the order given.
func waitStream(t *testing.T, js jetstream.JetStream, name string) {
	t.Helper()
	devtest.Eventually(t, 20*time.Second, func() error {
		_, err := js.Stream(context.Background(), name)
		return err
	})
}

func exec(t *testing.T, pool *pgxpool.Pool, sql string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql); err != nil {
		t.Fatal(err)
	}
}

// TestDeliverAndConfirmReadsItsOwnWrite: a command appends the last step of
// an order and answers from the read model at once, after WaitFor — no
// polling, no retry: complete for a placed and paid order, not complete for
// one that was never paid.
func TestDeliverAndConfirmReadsItsOwnWrite(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	ctx := context.Background()
	b.project(t, "r1", examples.OrderFulfilment(b.pool))
	w := projector.NewWaiter(b.js, b.pool)
	defer w.Close()
	paid := examples.Order{ID: "ryw-1", Customer: "acme", Total: 4200, Carrier: "dhl"}
	unpaid := examples.Order{ID: "ryw-2", Customer: "acme", Total: 100, Carrier: "ups"}
	if err := examples.AppendOrderFlow(ctx, b.pool, paid, examples.StepPlaced, examples.StepPaid); err != nil {
		t.Fatal(err)
	}
	if err := examples.AppendOrderFlow(ctx, b.pool, unpaid, examples.StepPlaced); err != nil {
		t.Fatal(err)
	}
	// The projection runs (WaitFor needs it initialised) and has the first
	// steps.
	devtest.Eventually(t, 20*time.Second, func() error { return orderHas(ctx, b.pool, unpaid.ID, []examples.OrderStep{examples.StepPlaced}) })
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, c := range []struct {
		o    examples.Order
		want bool
	}{{paid, true}, {unpaid, false}} {
		got, err := examples.DeliverAndConfirm(wctx, b.pool, w, c.o)
		if err != nil || got != c.want {
			t.Fatalf("order %s: complete %v (%v), want %v", c.o.ID, got, err, c.want)
		}
	}
}
