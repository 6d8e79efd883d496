package projector_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

func TestMain(m *testing.M) { devtest.Main(m) }

type WalletOpened struct {
	Owner string `json:"owner"`
}
type MoneyWasAddedToWallet struct {
	Amount int64 `json:"amount"`
}
type MoneyWasWithdrawnFromWallet struct {
	Amount int64 `json:"amount"`
}

type Balance struct {
	Owner string `json:"owner"`
	Cents int64  `json:"cents"`
	Count int    `json:"count"`
}

func walletBalance(name string, opts ...projection.Option) *projection.Projection[Balance] {
	p := projection.New[Balance](name, append([]projection.Option{projection.FromAggregates("wallet")}, opts...)...)
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[WalletOpened]) error {
		c.State.Owner = e.Data.Owner
		c.State.Count++
		return nil
	})
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Cents += e.Data.Amount
		c.State.Count++
		return nil
	})
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasWithdrawnFromWallet]) error {
		if e.Data.Amount < 0 {
			return errors.New("negative withdrawal")
		}
		c.State.Cents -= e.Data.Amount
		c.State.Count++
		return nil
	})
	return p
}

type bundle struct {
	nats *devenv.NATS
	nc   *nats.Conn
	js   jetstream.JetStream
	// fold is the reference: what every wallet's balance must be.
	mu   sync.Mutex
	fold map[string]Balance
	ver  map[string]int64
	pos  int64
}

// admin changes the projections' lifecycle, as the projector commands do.
func (b *bundle) admin() *projector.Admin { return projector.NewAdmin(b.js, projector.AdminOptions{}) }

func setup(t *testing.T) *bundle {
	t.Helper()
	b := &bundle{nats: devtest.NATS(t), fold: map[string]Balance{}, ver: map[string]int64{}}
	b.nc, b.js = devtest.Connect(t, b.nats)
	if _, _, err := feeder.EnsureStream(context.Background(), b.js, feeder.Config{}.Defaults()); err != nil {
		t.Fatal(err)
	}
	return b
}

// publish appends wallet events straight to EVENTS, as the feeder would.
func (b *bundle) publish(t *testing.T, wallet string, typ string, payload string) {
	t.Helper()
	b.mu.Lock()
	b.pos++
	b.ver[wallet]++
	e := eventstore.Event{Position: b.pos, TransactionID: uint64(b.pos), AggregateType: "wallet", AggregateID: wallet,
		Version: b.ver[wallet], Type: typ, Payload: []byte(payload), RecordedAt: time.Now()}
	bal := b.fold["wallet/"+wallet]
	var amount int64
	_, _ = fmt.Sscanf(payload, `{"amount":%d}`, &amount) // other payloads keep 0
	switch typ {
	case "WalletOpened":
		_, _ = fmt.Sscanf(payload, `{"owner":%q}`, &bal.Owner)
		bal.Count++
	case "MoneyWasAddedToWallet":
		bal.Cents += amount
		bal.Count++
	case "MoneyWasWithdrawnFromWallet":
		bal.Cents -= amount
		bal.Count++
	}
	b.fold["wallet/"+wallet] = bal
	b.mu.Unlock()
	m, err := eventmsg.New("events", e)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func (b *bundle) publishWallets(t *testing.T, wallets, deposits int) {
	t.Helper()
	for i := range wallets {
		b.publish(t, fmt.Sprintf("w%d", i), "WalletOpened", fmt.Sprintf(`{"owner":"o%d"}`, i))
	}
	for d := range deposits {
		for i := range wallets {
			b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", fmt.Sprintf(`{"amount":%d}`, 100+d))
		}
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("JETPROJ_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}

type running struct {
	p      *projector.Projector
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
}

func (b *bundle) run(t *testing.T, replica string, defs ...projection.Definer) *running {
	t.Helper()
	return b.runWith(t, projector.Options{Replica: replica, LeaseTTL: 2 * time.Second, Logger: testLogger(t)}, defs...)
}

// runWith starts a replica with opts on a connection of its own; it stops
// when the test ends.
func (b *bundle) runWith(t *testing.T, opts projector.Options, defs ...projection.Definer) *running {
	t.Helper()
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	p, err := projector.New(nc, opts, defs...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{p: p, nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("projector: %v", err)
		}
		r.done <- nil
	case <-time.After(20 * time.Second):
		t.Error("projector did not stop within 20s")
	}
	r.nc.Close()
}

// kill drops the connection first: leases are neither renewed nor released.
func (r *running) kill(t *testing.T) {
	r.nc.Close()
	r.stop(t)
}

// states reads every partition's state of a KV-backed projection.
func (b *bundle) states(t *testing.T, name string) map[string]projector.Record {
	t.Helper()
	ctx := context.Background()
	out := map[string]projector.Record{}
	kv, err := b.js.KeyValue(ctx, contract.StateBucket(name))
	if err != nil {
		return out
	}
	w, err := kv.Watch(ctx, "p.>")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop() //nolint:errcheck
	for e := range w.Updates() {
		if e == nil {
			break
		}
		var r projector.Record
		if err := jsonUnmarshal(e.Value(), &r); err != nil {
			t.Fatal(err)
		}
		out[r.Key] = r
	}
	return out
}

// waitFold waits until every wallet's stored state equals the fold.
func (b *bundle) waitFold(t *testing.T, name string, within time.Duration) {
	t.Helper()
	devtest.Eventually(t, within, func() error {
		got := b.states(t, name)
		b.mu.Lock()
		defer b.mu.Unlock()
		for k, want := range b.fold {
			r, ok := got[k]
			if !ok {
				return fmt.Errorf("%s: no state yet (%d of %d partitions)", k, len(got), len(b.fold))
			}
			var bal Balance
			if err := jsonUnmarshal(r.State, &bal); err != nil {
				return err
			}
			if bal != want {
				return fmt.Errorf("%s: state %+v, want %+v", k, bal, want)
			}
		}
		return nil
	})
}

func TestPartitionedKVProjectionEqualsFold(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.publishWallets(t, 300, 10)
	b.run(t, "r1", walletBalance("wallet_balance"))
	b.waitFold(t, "wallet_balance", 30*time.Second)
	b.publishWallets(t, 10, 2)
	b.waitFold(t, "wallet_balance", 30*time.Second)
}

func TestReplicasShareAndSurviveKills(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	def := walletBalance("wallet_balance")
	b.publishWallets(t, 200, 5)
	r1 := b.run(t, "r1", def)
	r2 := b.run(t, "r2", walletBalance("wallet_balance"))
	b.waitFold(t, "wallet_balance", 30*time.Second)
	// Both replicas own slots.
	devtest.Eventually(t, 15*time.Second, func() error {
		s1, s2 := slotsOf(r1), slotsOf(r2)
		if len(s1) == 0 || len(s2) == 0 || len(s1)+len(s2) != 64 {
			return fmt.Errorf("slots r1 %d, r2 %d", len(s1), len(s2))
		}
		return nil
	})
	var wg sync.WaitGroup
	wg.Go(func() { b.publishWallets(t, 200, 5) })
	r1.kill(t)
	r3 := b.run(t, "r3", walletBalance("wallet_balance"))
	wg.Wait()
	b.waitFold(t, "wallet_balance", 60*time.Second)
	_ = r3
}

func TestPoisonEventParksOnlyItsPartition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	def := walletBalance("wallet_balance", projection.Retries(3, 10*time.Millisecond, 50*time.Millisecond))
	b.publishWallets(t, 100, 3)
	b.publish(t, "w7", "MoneyWasWithdrawnFromWallet", `{"amount":-5}`)
	b.publish(t, "w7", "MoneyWasAddedToWallet", `{"amount":1}`)
	b.publishWallets(t, 100, 2)
	b.run(t, "r1", def)
	// Every other wallet completes.
	devtest.Eventually(t, 30*time.Second, func() error {
		got := b.states(t, "wallet_balance")
		r := got["wallet/w7"]
		if r.Parked == nil {
			return fmt.Errorf("w7 not parked: %+v", r)
		}
		for k, want := range b.fold {
			if k == "wallet/w7" {
				continue
			}
			var bal Balance
			_ = jsonUnmarshal(got[k].State, &bal)
			if bal != want {
				return fmt.Errorf("%s: %+v, want %+v", k, bal, want)
			}
		}
		return nil
	})
	got := b.states(t, "wallet_balance")["wallet/w7"]
	if got.Parked.EventType != "MoneyWasWithdrawnFromWallet" || got.Parked.Attempts != 3 {
		t.Fatalf("parked %+v", got.Parked)
	}
	// Skip the poison event: w7 resumes from its own position.
	ctx := context.Background()
	if err := b.admin().Skip(ctx, def, "wallet/w7"); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	bal := b.fold["wallet/w7"]
	bal.Cents += -5 // undo the skipped withdrawal of -5
	bal.Count--
	b.fold["wallet/w7"] = bal
	b.mu.Unlock()
	b.waitFold(t, "wallet_balance", 30*time.Second)
}
