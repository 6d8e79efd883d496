package projector_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// TestSetLiveDoesNotWaitForTheWatch: a deployment switched live emits for
// every event published after SetLive returned, even on a replica whose copy
// of the registry still says it is not live (here: never updated). Before
// the switch it emits nothing.
func TestSetLiveDoesNotWaitForTheWatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	pool := devtest.Pool(t)
	p := projection.New[struct{}]("live_switch", projection.FromAggregates("wallet"), projection.Postgres(pool), projection.NotLive())
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[MoneyWasAddedToWallet]) error {
		return c.Emit("Seen", map[string]int64{"amount": e.Data.Amount})
	})
	pos := int64(0)
	publish := func(wallet string, amount int) {
		t.Helper()
		pos++
		m, err := eventmsg.New("events", eventstore.Event{Position: pos, TransactionID: uint64(pos), AggregateType: "wallet", AggregateID: wallet,
			Version: 1, Type: "MoneyWasAddedToWallet", Payload: fmt.Appendf(nil, `{"amount":%d}`, amount), RecordedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		publish(fmt.Sprintf("before%d", i), 1)
	}
	if err := projectorInit(ctx, b, p); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	opts := projector.WithStaleRegistry(projector.Options{Replica: "r1", LeaseTTL: 2 * time.Second, Logger: testLogger(t)})
	pr, err := projector.New(nc, opts, p)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- pr.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("projector: %v", err)
		}
		nc.Close()
	})
	seen := func() (rows, before int, err error) {
		err = pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE partition LIKE 'wallet/before%') FROM jetproj.outbox WHERE projection = 'live_switch'`).Scan(&rows, &before)
		return rows, before, err
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.partitions WHERE projection = 'live_switch'`).Scan(&n); err != nil {
			return err
		}
		if n != 10 {
			return fmt.Errorf("%d partitions handled, want 10", n)
		}
		return nil
	})
	if rows, _, err := seen(); err != nil || rows != 0 {
		t.Fatalf("not live: %d outbox rows (%v), want 0", rows, err)
	}

	if err := projector.NewAdmin(b.js, projector.AdminOptions{}).SetLive(ctx, p, true); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		publish(fmt.Sprintf("after%d", i), 2)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		rows, before, err := seen()
		if err != nil {
			return err
		}
		if before != 0 {
			t.Fatalf("%d derived events of events before the switch", before)
		}
		if rows != 5 {
			return fmt.Errorf("%d derived events after the switch, want 5", rows)
		}
		return nil
	})
}
