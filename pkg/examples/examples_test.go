package examples_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/demo"
	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projection/projectiontest"
	"github.com/jetproj/jetproj/pkg/projector"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// bundle is one test's servers: a fresh database with the event store, an
// embedded NATS server and a feeder publishing the store to EVENTS.
type bundle struct {
	pool *pgxpool.Pool
	nats *devenv.NATS
	js   jetstream.JetStream
	w    *demo.Writer
}

func setup(t *testing.T) *bundle {
	t.Helper()
	ctx := context.Background()
	b := &bundle{nats: devtest.NATS(t)}
	b.pool = devtest.Pool(t)
	if _, err := eventstore.Migrate(ctx, b.pool); err != nil {
		t.Fatal(err)
	}
	_, b.js = devtest.Connect(t, b.nats)
	b.w = demo.NewWriter(b.pool, 42, "")
	b.background(t, "feeder", func(ctx context.Context, nc *nats.Conn) error {
		f, err := feeder.New(feeder.Config{}, feeder.Deps{Pool: b.pool, NC: nc, Logger: testLogger(t, "feeder")})
		if err != nil {
			return err
		}
		return f.Run(ctx)
	})
	// The emitter publishes derived events, which pipeline stages such as
	// high_value_wallets read.
	b.background(t, "emitter", func(ctx context.Context, nc *nats.Conn) error {
		e, err := emitter.New(emitter.Config{LeaseTTL: 2 * time.Second, PollInterval: 100 * time.Millisecond}, b.pool, nc, testLogger(t, "emitter"), nil)
		if err != nil {
			return err
		}
		return e.Run(ctx)
	})
	return b
}

// background runs f with its own NATS connection until the test ends; the
// returned stop ends it earlier.
func (b *bundle) background(t *testing.T, name string, f func(ctx context.Context, nc *nats.Conn) error) (stop func()) {
	t.Helper()
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx, nc) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("%s did not stop within 20s", name)
		}
		nc.Close()
	}
	t.Cleanup(stop)
	return stop
}

// project runs a projector replica with defs.
func (b *bundle) project(t *testing.T, replica string, defs ...projection.Definer) (stop func()) {
	t.Helper()
	return b.background(t, "projector "+replica, func(ctx context.Context, nc *nats.Conn) error {
		p, err := projector.New(nc, projector.Options{Replica: replica, LeaseTTL: 2 * time.Second, Logger: testLogger(t, replica)}, defs...)
		if err != nil {
			return err
		}
		return p.Run(ctx)
	})
}

// write appends at least n events of the example domain.
func (b *bundle) write(t *testing.T, n int) {
	t.Helper()
	for written := 0; written < n; {
		k, err := b.w.Step(context.Background())
		if err != nil {
			t.Errorf("write: %v", err)
			return
		}
		written += k
	}
}

func (b *bundle) waitVerified(t *testing.T, within time.Duration, names ...string) {
	t.Helper()
	devtest.Eventually(t, within, func() error { return examplecheck.Verify(context.Background(), b.pool, b.js, names...) })
}

func testLogger(t *testing.T, who string) *slog.Logger {
	if os.Getenv("JETPROJ_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name(), "who", who)
}

// TestReadModelsEqualFold runs every example projection on a backlog and
// then on live events: each read model ends equal to the fold of the event
// store.
func TestReadModelsEqualFold(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	b.write(t, 2000)
	b.project(t, "r1", examples.All(b.pool)...)
	b.write(t, 1000)
	b.waitVerified(t, 45*time.Second)

	// The fold is not trivially empty.
	ctx := context.Background()
	wallets, _ := examplecheck.ReadWallets(ctx, b.pool)
	counts, _ := examplecheck.ReadTicketCounts(ctx, b.pool)
	if len(wallets) < 5 || counts.Open == 0 || counts.Closed == 0 {
		t.Fatalf("little to compare: %d wallets, counts %+v", len(wallets), counts)
	}
	orders, _ := examplecheck.ReadOrders(ctx, b.pool)
	high, _ := examplecheck.ReadHighValueWallets(ctx, b.pool)
	completed, crossings := 0, int64(0)
	for _, o := range orders {
		if o.Completed {
			completed++
		}
	}
	for _, h := range high {
		crossings += h.Crossings
	}
	if completed == 0 || completed == len(orders) || crossings == 0 {
		t.Fatalf("little to compare: %d of %d orders completed, %d wallets became of high value", completed, len(orders), crossings)
	}
	devtest.Eventually(t, 30*time.Second, func() error { return examplecheck.VerifyDerived(ctx, b.pool, b.js) })
}

// TestGlobalAndPartitionedAgree runs the global ticket_counts and the
// partitioned ticket_details (and wallet_balance with wallet_balance_kv) side
// by side on two replicas from the same EVENTS while events arrive and a
// replica leaves: the global counts equal the per-ticket rows summed up, and
// the SQL balances equal the KV documents.
func TestGlobalAndPartitionedAgree(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	b.write(t, 1000)
	stop1 := b.project(t, "r1", examples.All(b.pool)...)
	b.project(t, "r2", examples.All(b.pool)...)
	b.write(t, 1000)
	stop1() // the global projection moves to r2 if r1 ran it
	b.write(t, 500)
	b.waitVerified(t, 45*time.Second)
	ctx := context.Background()
	if err := examplecheck.Agree(ctx, b.pool); err != nil {
		t.Fatal(err)
	}
	rows, err := examplecheck.ReadWallets(ctx, b.pool)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := examplecheck.ReadWalletDocs(ctx, b.js)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(docs) {
		t.Fatalf("%d rows, %d documents", len(rows), len(docs))
	}
	for id, r := range rows {
		if d := docs[id]; d.Owner != r.Owner || d.Balance != r.Balance {
			t.Fatalf("%s: row %+v, document %+v", id, r, d)
		}
	}
}

// TestResetAndPartitionRebuild resets ticket_counts and rebuilds one wallet
// of wallet_balance with the admin functions: the hooks clear the read
// model and the replay fills it again.
func TestResetAndPartitionRebuild(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	b.write(t, 1000)
	b.project(t, "r1", examples.All(b.pool)...)
	b.waitVerified(t, 30*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, js := devtest.Connect(t, b.nats)
	admin := projector.NewAdmin(js, projector.AdminOptions{Progress: t.Logf})
	// A partition command goes to the replica owning the partition: wait
	// until the replica holds every slot.
	wb := examples.WalletBalance(b.pool)
	devtest.Eventually(t, 20*time.Second, func() error {
		st, err := admin.Status(ctx, wb)
		if err != nil || st.Owners["r1"] != st.Slots {
			return fmt.Errorf("owners %v of %d slots (%v)", st.Owners, st.Slots, err)
		}
		return nil
	})
	if err := admin.Reset(ctx, examples.TicketCounts(b.pool)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE wallet_balance SET balance = -1 WHERE wallet_id = 'w-1'`); err != nil {
		t.Fatal(err)
	}
	if err := admin.RebuildPartition(ctx, wb, "wallet/w-1"); err != nil {
		t.Fatal(err)
	}
	b.write(t, 200)
	b.waitVerified(t, 30*time.Second)
}

// TestHandlersWithoutServers applies events to the KV projection and runs
// wallet_balance's flush hook in memory.
func TestHandlersWithoutServers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	kv := projectiontest.NewPartition(examples.WalletBalanceKV(), "wallet/w-1")
	if err := kv.Apply(ctx,
		projectiontest.Event("WalletOpened", examples.WalletOpened{Owner: "ann"}),
		projectiontest.Event("MoneyWasAddedToWallet", examples.MoneyWasAddedToWallet{Amount: 500}),
		projectiontest.Event("MoneyWasWithdrawnFromWallet", examples.MoneyWasWithdrawnFromWallet{Amount: 120}),
		projectiontest.Event("SomethingElse", struct{}{}),
	); err != nil {
		t.Fatal(err)
	}
	if got, want := *kv.State, (examples.WalletDoc{Owner: "ann", Balance: 380}); got != want {
		t.Fatalf("state %+v, want %+v", got, want)
	}
	err := kv.Apply(ctx, projectiontest.Event("MoneyWasAddedToWallet", json.RawMessage(`{"amount":"x"}`)))
	if err == nil {
		t.Fatal("a payload that does not decode is no error")
	}

	wb := projectiontest.NewPartition(examples.WalletBalance(nil), "wallet/w-7")
	*wb.State = examples.WalletState{Balance: 4200}
	if err := wb.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(wb.Statements) != 0 {
		t.Fatalf("flush queued %v, want nothing (the handlers write)", wb.Statements)
	}
	deposit := projectiontest.Event("MoneyWasAddedToWallet", examples.MoneyWasAddedToWallet{Amount: 50})
	deposit.AggregateID = "w-7"
	if err := wb.Apply(ctx, deposit); err != nil {
		t.Fatal(err)
	}
	if len(wb.Statements) != 1 || fmt.Sprint(wb.Statements[0].Args) != "[w-7 4250]" {
		t.Fatalf("deposit queued %v, want one upsert of [w-7 4250]", wb.Statements)
	}
	if len(wb.Emitted) != 1 || wb.Emitted[0].Type != "WalletBalanceWasChanged" {
		t.Fatalf("emitted %+v", wb.Emitted)
	}
	var ev examples.WalletBalanceWasChanged
	if err := json.Unmarshal(wb.Emitted[0].Payload, &ev); err != nil || ev != (examples.WalletBalanceWasChanged{WalletID: "w-7", Balance: 4200}) {
		t.Fatalf("payload %s (%v)", wb.Emitted[0].Payload, err)
	}
	if got := string(wb.Emitted[0].Payload); got != `{"walletId":"w-7","balance":4200}` {
		t.Fatalf("payload %s", got)
	}
}

func TestDefinitionsAreValid(t *testing.T) {
	t.Parallel()
	want := map[string]projectionspec.Kind{
		"wallet_balance": projectionspec.Partitioned, "wallet_balance_kv": projectionspec.Partitioned,
		"ticket_details": projectionspec.Partitioned, "ticket_counts": projectionspec.Global,
		"order_fulfilment": projectionspec.Partitioned, "high_value_wallets": projectionspec.Partitioned,
	}
	for _, d := range examples.All(nil) {
		def := d.Def()
		if err := def.Validate(); err != nil {
			t.Error(err)
		}
		if k, ok := want[def.Name()]; !ok || k != projectionspec.Of(def).Kind() {
			t.Errorf("%s: kind %v, want %v (known %v)", def.Name(), projectionspec.Of(def).Kind(), k, ok)
		}
		if got, ok := examples.ByName(nil, def.Name()); !ok || got.Def().Name() != def.Name() {
			t.Errorf("ByName(%s) = %v, %v", def.Name(), got, ok)
		}
	}
	if _, ok := examples.ByName(nil, "nope"); ok {
		t.Error("ByName(nope) found something")
	}
	if got := fmt.Sprint(examples.Names()); got != "[wallet_balance wallet_balance_kv ticket_details ticket_counts order_fulfilment high_value_wallets]" {
		t.Errorf("Names() = %s", got)
	}
}

// TestFold checks the reference fold on a hand-written history.
func TestFold(t *testing.T) {
	t.Parallel()
	ev := func(agg, id, typ, payload string) eventstore.Event {
		return eventstore.Event{AggregateType: agg, AggregateID: id, Type: typ, Payload: []byte(payload)}
	}
	events := []eventstore.Event{
		ev("wallet", "a", "WalletOpened", `{"owner":"ann"}`),
		ev("wallet", "a", "MoneyWasAddedToWallet", `{"amount":1000}`),
		ev("ticket", "t1", "TicketWasRegistered", `{"type":"bug"}`),
		ev("wallet", "b", "WalletOpened", `{"owner":"bob"}`),
		ev("wallet", "a", "MoneyWasWithdrawnFromWallet", `{"amount":300}`),
		ev("ticket", "t2", "TicketWasRegistered", `{"type":"feature"}`),
		ev("ticket", "t1", "TicketWasClosed", `{}`),
		ev("order", "o1", "OrderPlaced", `{"customer":"acme","total":5000}`),
	}
	wallets, err := examplecheck.FoldWallets(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(wallets); got != "map[a:{a ann 700} b:{b bob 0}]" {
		t.Errorf("wallets %s", got)
	}
	tickets, err := examplecheck.FoldTickets(events)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(tickets); got != "map[t1:{t1 bug closed} t2:{t2 feature open}]" {
		t.Errorf("tickets %s", got)
	}
	counts := examplecheck.FoldTicketCounts(events)
	if counts != (examplecheck.Counts{Open: 1, Closed: 1}) || examplecheck.CountTickets(tickets) != counts {
		t.Errorf("counts %+v, summed %+v", counts, examplecheck.CountTickets(tickets))
	}
	if _, err := examplecheck.FoldWallets(append(events, ev("wallet", "a", "MoneyWasAddedToWallet", `{"amount":"x"}`))); err == nil {
		t.Error("a payload that does not decode is no error")
	}
}

// TestFoldOrdersAndHighValue checks the folds of order_fulfilment and
// high_value_wallets on hand-written histories.
func TestFoldOrdersAndHighValue(t *testing.T) {
	t.Parallel()
	ev := func(agg, id, typ, payload string) eventstore.Event {
		return eventstore.Event{AggregateType: agg, AggregateID: id, Type: typ, Payload: []byte(payload)}
	}
	events := []eventstore.Event{
		ev("shipment", "s1", "ShipmentDelivered", `{"orderId":"o1","carrier":"dhl"}`),
		ev("payment", "p2", "PaymentSucceeded", `{"orderId":"o2"}`),
		ev("order", "o1", "OrderPlaced", `{"customer":"acme","total":5000}`),
		ev("wallet", "o1", "WalletOpened", `{"owner":"not an order"}`),
		ev("payment", "p1", "PaymentSucceeded", `{"orderId":"o1"}`),
		ev("order", "o2", "OrderPlaced", `{"customer":"globex","total":700}`),
	}
	rows, err := examplecheck.FoldOrders(events)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(rows), "map[o1:{o1 true acme 5000 true p1 true s1 dhl true} o2:{o2 true globex 700 true p2 false   false}]"; got != want {
		t.Errorf("orders %s, want %s", got, want)
	}
	done, err := examplecheck.ExpectedCompletedOrders(events)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(done), "map[o1:{o1 acme 5000 dhl}]"; got != want {
		t.Errorf("completed %s, want %s", got, want)
	}
	if _, err := examplecheck.FoldOrders(append(events, ev("payment", "p3", "PaymentSucceeded", `{}`))); err == nil {
		t.Error("a payment without orderId is no error")
	}

	high, emitted := examplecheck.FoldHighValue([]examples.WalletBalanceWasChanged{
		{WalletID: "a", Balance: 99999}, {WalletID: "a", Balance: 100000}, {WalletID: "b", Balance: 500000},
		{WalletID: "a", Balance: 200000}, {WalletID: "a", Balance: 0}, {WalletID: "a", Balance: 100001},
	})
	if got, want := fmt.Sprint(high), "map[a:{a 100001 true 2} b:{b 500000 true 1}]"; got != want {
		t.Errorf("high value %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(emitted), "[{a 100000} {b 500000} {a 100001}]"; got != want {
		t.Errorf("emitted %s, want %s", got, want)
	}
}
