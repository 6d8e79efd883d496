package projector_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// waitBundle is a bundle with an event store and a feeder publishing it.
type waitBundle struct {
	*bundle
	pool *pgxpool.Pool
}

func waitSetup(t *testing.T) *waitBundle {
	t.Helper()
	ctx := context.Background()
	b := &waitBundle{bundle: setup(t)}
	b.pool = devtest.Pool(t)
	if _, err := eventstore.Migrate(ctx, b.pool); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	f, err := feeder.New(feeder.Config{PollInterval: 50 * time.Millisecond}.Defaults(), feeder.Deps{Pool: b.pool, NC: nc, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.Run(fctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("feeder: %v", err)
		}
		nc.Close()
	})
	return b
}

// appendEvent appends one event and returns its position.
func (b *waitBundle) appendEvent(t *testing.T, aggType, id, typ string, payload any) int64 {
	t.Helper()
	res, err := eventstore.Append(context.Background(), b.pool, aggType, id, eventstore.ExpectAny, eventstore.NewEvent{Type: typ, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	return res.LastPosition
}

// Read-your-writes with a PostgreSQL read model and two replicas: each
// time WaitFor returns, the row already shows the event — read once, right
// after, never waited for.
func TestWaitForPostgresReadModel(t *testing.T) {
	t.Parallel()
	b := waitSetup(t)
	ctx := context.Background()
	var inFlight sync.Map
	var overlaps atomic.Int64
	def := pgBalance(b.pool, &inFlight, &overlaps, projection.Slots(4))
	if err := projectorInit(ctx, b.bundle, def); err != nil {
		t.Fatal(err)
	}
	b.run(t, "r1", def)
	b.run(t, "r2", pgBalance(b.pool, &inFlight, &overlaps, projection.Slots(4)))
	w := projector.NewWaiter(b.js, b.pool)
	defer w.Close()
	cents := map[string]int64{}
	for i := range 40 {
		wallet := fmt.Sprintf("w%d", i%7)
		if _, ok := cents[wallet]; !ok {
			b.appendEvent(t, "wallet", wallet, "WalletOpened", WalletOpened{Owner: "o"})
			cents[wallet] = 0
		}
		pos := b.appendEvent(t, "wallet", wallet, "MoneyWasAddedToWallet", MoneyWasAddedToWallet{Amount: int64(i + 1)})
		cents[wallet] += int64(i + 1)
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := w.WaitFor(wctx, "wallet_balance_pg", pos)
		cancel()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		var got int64
		if err := b.pool.QueryRow(ctx, `SELECT cents FROM balances WHERE wallet = $1`, wallet).Scan(&got); err != nil {
			t.Fatalf("event %d: read model right after WaitFor: %v", i, err)
		}
		if got != cents[wallet] {
			t.Fatalf("event %d: %s has %d cents right after WaitFor, want %d", i, wallet, got, cents[wallet])
		}
	}
}

// The same with the state in KV (the read model is the partition's state),
// through the one-off WaitFor.
func TestWaitForKVState(t *testing.T) {
	t.Parallel()
	b := waitSetup(t)
	ctx := context.Background()
	def := walletBalance("wait_kv", projection.Slots(8))
	if err := projectorInit(ctx, b.bundle, def); err != nil {
		t.Fatal(err)
	}
	b.run(t, "r1", def)
	store := projector.StoreFor(b.js, def.Def(), 1)
	count := map[string]int{}
	for i := range 20 {
		wallet := fmt.Sprintf("w%d", i%5)
		pos := b.appendEvent(t, "wallet", wallet, "MoneyWasAddedToWallet", MoneyWasAddedToWallet{Amount: 1})
		count[wallet]++
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := projector.WaitFor(wctx, b.js, b.pool, "wait_kv", pos)
		cancel()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		key := "wallet/" + wallet
		rec, err := store.Get(ctx, projector.SlotOf(key, 8), key)
		if err != nil || rec == nil {
			t.Fatalf("event %d: record of %s right after WaitFor: %v, %v", i, key, rec, err)
		}
		var bal Balance
		if err := jsonUnmarshal(rec.State, &bal); err != nil {
			t.Fatal(err)
		}
		if bal.Count != count[wallet] {
			t.Fatalf("event %d: %s has %d events right after WaitFor, want %d", i, key, bal.Count, count[wallet])
		}
	}
	// On file: a replicated bucket in memory can lose every full copy in
	// rolling restarts and stay without a leader.
	if s, err := b.js.Stream(ctx, contract.KVStream(contract.ProgressBucket)); err != nil {
		t.Fatal(err)
	} else if st := s.CachedInfo().Config.Storage; st != jetstream.FileStorage {
		t.Fatalf("progress bucket storage %v, want file", st)
	}
}

// A global projection, and an event it does not read: waiting for a
// ticket event (filtered out) returns only once the wallet event appended
// before it is applied. The handler waits for the test's go-ahead, so
// WaitFor must time out before it.
func TestWaitForGlobalAndUnreadEvents(t *testing.T) {
	t.Parallel()
	b := waitSetup(t)
	ctx := context.Background()
	gate := make(chan struct{})
	def := projection.New[Totals]("wait_totals", projection.FromAggregates("wallet"), projection.Global())
	projection.OnAny(def, func(ctx context.Context, c *projection.Context[Totals], m projection.Meta) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		c.State.Events++
		return nil
	})
	if err := projectorInit(ctx, b.bundle, def); err != nil {
		t.Fatal(err)
	}
	b.run(t, "r1", def)
	store := projector.StoreFor(b.js, def.Def(), 1)
	for i := range 3 {
		b.appendEvent(t, "wallet", fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", MoneyWasAddedToWallet{Amount: 10})
		pos := b.appendEvent(t, "ticket", fmt.Sprintf("t%d", i), "TicketWasRegistered", map[string]string{"type": "bug"})
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := projector.WaitFor(wctx, b.js, b.pool, "wait_totals", pos)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("round %d: WaitFor before the wallet event is applied: %v; want a deadline error", i, err)
		}
		gate <- struct{}{} // the handler takes the wallet event
		wctx, cancel = context.WithTimeout(ctx, 20*time.Second)
		err = projector.WaitFor(wctx, b.js, b.pool, "wait_totals", pos)
		cancel()
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		rec, err := store.Get(ctx, 0, projection.GlobalPartition)
		if err != nil || rec == nil {
			t.Fatalf("round %d: global record: %v, %v", i, rec, err)
		}
		var tot Totals
		if err := jsonUnmarshal(rec.State, &tot); err != nil {
			t.Fatal(err)
		}
		if tot.Events != i+1 {
			t.Fatalf("round %d: %d events applied right after WaitFor, want %d", i, tot.Events, i+1)
		}
	}
}

// Nobody runs the projection: WaitFor ends with ctx and says how far it
// got. Unknown projections and positions fail at once.
func TestWaitForErrors(t *testing.T) {
	t.Parallel()
	b := waitSetup(t)
	ctx := context.Background()
	def := walletBalance("wait_idle")
	if err := projectorInit(ctx, b.bundle, def); err != nil {
		t.Fatal(err)
	}
	pos := b.appendEvent(t, "wallet", "w1", "WalletOpened", WalletOpened{Owner: "o"})
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	err := projector.WaitFor(wctx, b.js, b.pool, "wait_idle", pos)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "has not applied position") {
		t.Fatalf("WaitFor with nobody running: %v; want a deadline error that says so", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("WaitFor returned %v after its deadline", d)
	}
	if err := projector.WaitFor(ctx, b.js, b.pool, "no_such_projection", pos); !errors.Is(err, projector.ErrUnknownProjection) {
		t.Fatalf("unknown projection: %v", err)
	}
	if err := projector.WaitFor(ctx, b.js, b.pool, "wait_idle", pos+1000); !errors.Is(err, projector.ErrEventNotFound) {
		t.Fatalf("unknown position: %v", err)
	}
}

// An event of a parked partition cannot be applied: WaitFor names the
// partition. Other partitions' events are waited for as usual.
func TestWaitForParkedPartition(t *testing.T) {
	t.Parallel()
	b := waitSetup(t)
	ctx := context.Background()
	def := walletBalance("wait_parked", projection.Retries(2, 5*time.Millisecond, 10*time.Millisecond))
	if err := projectorInit(ctx, b.bundle, def); err != nil {
		t.Fatal(err)
	}
	b.run(t, "r1", def)
	b.appendEvent(t, "wallet", "bad", "WalletOpened", WalletOpened{Owner: "o"})
	b.appendEvent(t, "wallet", "bad", "MoneyWasWithdrawnFromWallet", MoneyWasWithdrawnFromWallet{Amount: -5})
	pos := b.appendEvent(t, "wallet", "bad", "MoneyWasAddedToWallet", MoneyWasAddedToWallet{Amount: 1})
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err := projector.WaitFor(wctx, b.js, b.pool, "wait_parked", pos)
	var parked *projector.ParkedError
	if !errors.As(err, &parked) || !errors.Is(err, projector.ErrParked) || parked.Partition != "wallet/bad" || parked.EventType != "MoneyWasWithdrawnFromWallet" {
		t.Fatalf("WaitFor for a parked partition's event: %v; want a ParkedError naming wallet/bad", err)
	}
	good := b.appendEvent(t, "wallet", "good", "WalletOpened", WalletOpened{Owner: "o"})
	if err := projector.WaitFor(wctx, b.js, b.pool, "wait_parked", good); err != nil {
		t.Fatalf("another partition's event: %v", err)
	}
}
