package emitter_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	derivedpkg "github.com/jetproj/jetproj/internal/derived"
	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

func TestMain(m *testing.M) { devtest.Main(m) }

type MoneyWasAddedToWallet struct {
	Amount int64 `json:"amount"`
}

type Balance struct{ Cents int64 }

// walletBalance emits one WalletBalanceWasChanged per wallet per batch.
func walletBalance(pool *pgxpool.Pool, opts ...projection.Option) *projection.Projection[Balance] {
	return walletBalanceAs(pool, "wallet_balance", opts...)
}

// walletBalanceAs is wallet_balance under another name, with a table of that
// name: a version of it deployed beside the first (blue-green).
func walletBalanceAs(pool *pgxpool.Pool, name string, opts ...projection.Option) *projection.Projection[Balance] {
	table := pgx.Identifier{name}.Sanitize()
	p := projection.New[Balance](name, append([]projection.Option{projection.FromAggregates("wallet"), projection.Postgres(pool),
		projection.OnInit(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (wallet_id text PRIMARY KEY, balance bigint NOT NULL)`)
			return err
		}),
		projection.OnReset(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `TRUNCATE `+table)
			return err
		}),
		projection.OnDelete(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `DROP TABLE IF EXISTS `+table)
			return err
		})}, opts...)...)
	projection.On(p, func(ctx context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Cents += e.Data.Amount
		_, err := c.Tx().Exec(ctx, `INSERT INTO `+table+` VALUES ($1, $2) ON CONFLICT (wallet_id) DO UPDATE SET balance = $2`, e.AggregateID, c.State.Cents)
		return err
	})
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[Balance]) error {
		return c.Emit("WalletBalanceWasChanged", map[string]any{"walletId": c.Partition(), "balance": c.State.Cents})
	})
	return p
}

type bundle struct {
	nats *devenv.NATS
	js   jetstream.JetStream
	pool *pgxpool.Pool
	pos  int64
	ver  map[string]int64
	want map[string]int64 // balance per wallet
}

// admin changes the projections' lifecycle, as the projector commands do.
func (b *bundle) admin() *projector.Admin { return projector.NewAdmin(b.js, projector.AdminOptions{}) }

func setup(t *testing.T) *bundle {
	t.Helper()
	ctx := context.Background()
	b := &bundle{nats: devtest.NATS(t), ver: map[string]int64{}, want: map[string]int64{}}
	_, b.js = devtest.Connect(t, b.nats)
	b.pool = devtest.Pool(t)
	if _, _, err := feeder.EnsureStream(ctx, b.js, feeder.Config{}.Defaults()); err != nil {
		t.Fatal(err)
	}
	return b
}

// setupWalletBalance is setup with the wallet_balance projection
// initialised.
func setupWalletBalance(t *testing.T) *bundle {
	t.Helper()
	b := setup(t)
	if err := b.admin().Init(context.Background(), walletBalance(b.pool)); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *bundle) deposit(t *testing.T, wallet string, amount int64) {
	t.Helper()
	b.pos++
	b.ver[wallet]++
	b.want["wallet/"+wallet] += amount
	m, err := eventmsg.New("events", eventstore.Event{Position: b.pos, TransactionID: uint64(b.pos), AggregateType: "wallet", AggregateID: wallet,
		Version: b.ver[wallet], Type: "MoneyWasAddedToWallet", Payload: []byte(fmt.Sprintf(`{"amount":%d}`, amount)), RecordedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// start runs fn until the test ends or the returned stop is called; kill
// closes the connection first, as a crash would.
func (b *bundle) start(t *testing.T, fn func(ctx context.Context, nc *nats.Conn) error) (stop, kill func()) {
	t.Helper()
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx, nc) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("stopped with %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("did not stop")
			}
			nc.Close()
		})
	}
	t.Cleanup(stop)
	return stop, func() { nc.Close(); stop() }
}

func (b *bundle) projector(t *testing.T, defs ...projection.Definer) (stop, kill func()) {
	return b.start(t, func(ctx context.Context, nc *nats.Conn) error {
		p, err := projector.New(nc, projector.Options{Replica: fmt.Sprintf("r%d", time.Now().UnixNano()), LeaseTTL: 2 * time.Second}, defs...)
		if err != nil {
			return err
		}
		return p.Run(ctx)
	})
}

func (b *bundle) emitter(t *testing.T) (stop, kill func()) {
	return b.start(t, func(ctx context.Context, nc *nats.Conn) error {
		e, err := emitter.New(emitter.Config{LeaseTTL: 2 * time.Second}, b.pool, nc, nil, nil)
		if err != nil {
			return err
		}
		return e.Run(ctx)
	})
}

// newEmitter builds an emitter on its own connection, for tests that run
// its rounds themselves (RelayOnce).
func (b *bundle) newEmitter(t *testing.T) *emitter.Emitter {
	t.Helper()
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e, err := emitter.New(emitter.Config{}, b.pool, nc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// relayAll runs e's rounds until the outbox is empty.
func (b *bundle) relayAll(t *testing.T, e *emitter.Emitter) {
	t.Helper()
	b.relayWithin(t, e, 10*time.Second)
}

// relayWithin runs e's rounds until the outbox is empty, for at most d.
func (b *bundle) relayWithin(t *testing.T, e *emitter.Emitter, d time.Duration) {
	t.Helper()
	ctx := context.Background()
	devtest.Eventually(t, d, func() error {
		if _, err := e.RelayOnce(ctx); err != nil {
			return err
		}
		var n int
		if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d rows in the outbox", n)
		}
		return nil
	})
}

type derived struct {
	id      string
	subject string
	balance int64
}

func (b *bundle) derived(t *testing.T) []derived {
	t.Helper()
	return b.derivedOf(t, "wallet_balance")
}

// derivedOf reads the derived events of the projection called name.
func (b *bundle) derivedOf(t *testing.T, name string) []derived {
	t.Helper()
	ctx := context.Background()
	s, err := b.js.Stream(ctx, contract.ProjectionStream(name))
	if err != nil {
		return nil // not initialised yet
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []derived
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			Balance int64 `json:"balance"`
		}
		_ = json.Unmarshal(m.Data, &p)
		out = append(out, derived{m.Header.Get(nats.MsgIdHdr), m.Subject, p.Balance})
	}
	return out
}

// finals checks every derived event is unique and returns the last balance
// per subject.
func finals(t *testing.T, ds []derived) map[string]int64 {
	t.Helper()
	seen := map[string]bool{}
	last := map[string]int64{}
	for _, d := range ds {
		if seen[d.id] {
			t.Fatalf("derived event %s appears twice", d.id)
		}
		seen[d.id] = true
		last[d.subject] = d.balance
	}
	return last
}

func (b *bundle) waitFinals(t *testing.T) {
	t.Helper()
	devtest.Eventually(t, 60*time.Second, func() error {
		last := finals(t, b.derived(t))
		for w, want := range b.want {
			subj := projector.EmitSubject("wallet_balance", w)
			if last[subj] != want {
				return fmt.Errorf("%s: last derived balance %d, want %d (%d subjects)", subj, last[subj], want, len(last))
			}
		}
		return nil
	})
}

func TestEmittedExactlyOnceThroughKills(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	for i := range 50 {
		for d := range 4 {
			b.deposit(t, fmt.Sprintf("w%d", i), int64(100+d))
		}
	}
	_, killProjector := b.projector(t, walletBalance(b.pool))
	_, killEmitter := b.emitter(t)
	devtest.Eventually(t, 30*time.Second, func() error {
		if n := len(b.derived(t)); n == 0 {
			return fmt.Errorf("nothing emitted yet")
		}
		return nil
	})
	killEmitter()
	for i := range 50 {
		b.deposit(t, fmt.Sprintf("w%d", i), 7)
	}
	killProjector()
	b.projector(t, walletBalance(b.pool))
	b.emitter(t)
	for i := range 50 {
		b.deposit(t, fmt.Sprintf("w%d", i), 11)
	}
	b.waitFinals(t)
	var pending int
	if err := b.pool.QueryRow(context.Background(), `SELECT count(*) FROM jetproj.outbox`).Scan(&pending); err != nil || pending != 0 {
		t.Fatalf("outbox holds %d rows after the relay, %v", pending, err)
	}
}

// TestRebuildAndNotLiveEmitNothing is G5.
func TestRebuildAndNotLiveEmitNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	for i := range 20 {
		b.deposit(t, fmt.Sprintf("w%d", i), 100)
	}
	def := walletBalance(b.pool)
	b.projector(t, def)
	b.emitter(t)
	b.waitFinals(t)
	before := len(b.derived(t))

	// Rebuild: the read model is rebuilt, nothing is emitted.
	if err := b.admin().Reset(ctx, def); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		var n int64
		if err := b.pool.QueryRow(ctx, `SELECT coalesce(sum(balance), 0) FROM wallet_balance`).Scan(&n); err != nil {
			return err
		}
		if n != 2000 {
			return fmt.Errorf("rebuilt total %d", n)
		}
		return nil
	})
	// One new event after the rebuild is emitted: the marker that the
	// emitter has relayed everything before it.
	b.deposit(t, "w0", 1)
	b.waitFinals(t)
	if got := len(b.derived(t)); got != before+1 {
		t.Fatalf("after the rebuild %d derived events, want %d (one for the new deposit)", got, before+1)
	}

	// Not live: nothing; switched live: only new events.
	if err := b.admin().SetLive(ctx, def, false); err != nil {
		t.Fatal(err)
	}
	// The runner learns the flag through a watch: deposit to probe wallets
	// until one is applied without being emitted.
	probe := 0
	devtest.Eventually(t, 30*time.Second, func() error {
		probe++
		w := fmt.Sprintf("probe%d", probe)
		b.deposit(t, w, 1)
		delete(b.want, "wallet/"+w)
		var n int64
		for {
			err := b.pool.QueryRow(ctx, `SELECT balance FROM wallet_balance WHERE wallet_id = $1`, w).Scan(&n)
			if err == nil {
				break
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			time.Sleep(5 * time.Millisecond) // polling the table for the probe's row
		}
		var queued int
		if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox WHERE partition = $1`, "wallet/"+w).Scan(&queued); err != nil {
			return err
		}
		_, emitted := finals(t, b.derived(t))[projector.EmitSubject("wallet_balance", "wallet/"+w)]
		if queued > 0 || emitted {
			return fmt.Errorf("probe %s was emitted: not live not seen yet", w)
		}
		return nil
	})
	b.deposit(t, "w1", 5)
	devtest.Eventually(t, 30*time.Second, func() error {
		var n int64
		if err := b.pool.QueryRow(ctx, `SELECT balance FROM wallet_balance WHERE wallet_id = 'w1'`).Scan(&n); err != nil {
			return err
		}
		if n != 105 {
			return fmt.Errorf("w1 %d", n)
		}
		return nil
	})
	if err := b.admin().SetLive(ctx, def, true); err != nil {
		t.Fatal(err)
	}
	b.deposit(t, "w2", 5)
	devtest.Eventually(t, 30*time.Second, func() error {
		last := finals(t, b.derived(t))
		if last[projector.EmitSubject("wallet_balance", "wallet/w2")] != 105 {
			return fmt.Errorf("w2's new balance not emitted yet")
		}
		return nil
	})
	last := finals(t, b.derived(t))
	if got := last[projector.EmitSubject("wallet_balance", "wallet/w1")]; got != 100 {
		t.Fatalf("w1's deposit while not live was emitted: last balance %d", got)
	}
}

// TestLinkToAndDelete: derived events also reach a linked stream; deleting
// the projection removes its own stream and keeps the linked one.
func TestLinkToAndDelete(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	p := walletBalance(b.pool)
	big := projection.New[Balance]("big_deposits", projection.FromAggregates("wallet"), projection.Postgres(b.pool))
	projection.On(big, func(_ context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasAddedToWallet]) error {
		if e.Data.Amount >= 1000 {
			return c.LinkTo("completed_orders", "BigDeposit", map[string]any{"wallet": e.AggregateID, "amount": e.Data.Amount})
		}
		return nil
	})
	b.deposit(t, "a", 5)
	b.deposit(t, "a", 5000)
	b.deposit(t, "b", 2000)
	stopProjector, _ := b.projector(t, p, big)
	b.emitter(t)
	count := func(stream string) (uint64, error) {
		s, err := b.js.Stream(ctx, stream)
		if err != nil {
			return 0, err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return 0, err
		}
		return info.State.Msgs, nil
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		n, err := count("completed_orders")
		if err == nil && n != 2 {
			err = fmt.Errorf("completed_orders holds %d", n)
		}
		return err
	})
	own, err := count(contract.ProjectionStream("big_deposits"))
	if err != nil || own != 2 {
		t.Fatalf("own stream holds %d, %v; want 2", own, err)
	}
	if err := b.admin().Delete(ctx, big); err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.Stream(ctx, contract.ProjectionStream("big_deposits")); err == nil {
		t.Fatal("the deleted projection's stream is still there")
	}
	if n, err := count("completed_orders"); err != nil || n != 2 {
		t.Fatalf("linked stream after delete: %d, %v", n, err)
	}

	// Revived, and live only for new events, the projection numbers its
	// derived events anew: the linked stream's marks of its previous life
	// (wallet a's first) must not hide them.
	stopProjector()
	if err := b.admin().Init(ctx, big); err != nil {
		t.Fatal(err)
	}
	for _, live := range []bool{false, true} {
		if err := b.admin().SetLive(ctx, big, live); err != nil {
			t.Fatal(err)
		}
	}
	b.projector(t, p, big)
	b.deposit(t, "a", 7000)
	devtest.Eventually(t, 30*time.Second, func() error {
		n, err := count("completed_orders")
		if err == nil && n != 3 {
			err = fmt.Errorf("completed_orders holds %d, want 3", n)
		}
		return err
	})
}

// balances reads a wallet_balance table by wallet id.
func (b *bundle) balances(t *testing.T, table string) map[string]int64 {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT wallet_id, balance FROM `+pgx.Identifier{table}.Sanitize())
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (struct {
		id  string
		bal int64
	}, error) {
		var v struct {
			id  string
			bal int64
		}
		err := r.Scan(&v.id, &v.bal)
		return v, err
	})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for _, v := range out {
		m[v.id] = v.bal
	}
	return m
}

// TestBlueGreen follows the runbook of docs/emission.md: v2 (its own name
// and table) is deployed not live beside v1 and catches up without
// emitting; once checked it is switched live and emits for new events only;
// v1 is deleted, its stream and table go, v2 goes on. A third version
// deployed with ManualStart does nothing until started.
func TestBlueGreen(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	ctx := context.Background()
	for i := range 30 {
		b.deposit(t, fmt.Sprintf("w%d", i), 100)
	}
	v1 := walletBalance(b.pool)
	b.projector(t, v1)
	b.emitter(t)
	b.waitFinals(t)

	// 1. v2 beside v1, not live, and v3 waiting for a manual start.
	v2 := walletBalanceAs(b.pool, "wallet_balance_v2", projection.NotLive())
	v3 := walletBalanceAs(b.pool, "wallet_balance_v3", projection.ManualStart())
	b.projector(t, v1, v2, v3)
	// 2. Check v2: caught up, equal to v1, nothing emitted.
	devtest.Eventually(t, 30*time.Second, func() error {
		st, err := b.admin().Status(ctx, v2)
		if err != nil {
			return err
		}
		if st.Lag != 0 || st.Position == 0 {
			return fmt.Errorf("v2 at %d, lag %d", st.Position, st.Lag)
		}
		if got, want := b.balances(t, "wallet_balance_v2"), b.balances(t, "wallet_balance"); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("v2 %v, v1 %v", got, want)
		}
		return nil
	})
	if n := len(b.derivedOf(t, "wallet_balance_v2")); n != 0 {
		t.Fatalf("v2 emitted %d events while not live", n)
	}
	// 3. Live: v2 emits for new events only.
	if err := b.admin().SetLive(ctx, v2, true); err != nil {
		t.Fatal(err)
	}
	b.deposit(t, "w3", 50)
	b.deposit(t, "new", 70)
	devtest.Eventually(t, 30*time.Second, func() error {
		last := finals(t, b.derivedOf(t, "wallet_balance_v2"))
		want := map[string]int64{projector.EmitSubject("wallet_balance_v2", "wallet/w3"): 150, projector.EmitSubject("wallet_balance_v2", "wallet/new"): 70}
		if fmt.Sprint(last) != fmt.Sprint(want) {
			return fmt.Errorf("v2 emitted %v, want exactly %v", last, want)
		}
		return nil
	})
	// v3 has done nothing although the projector handled new events.
	if st, err := b.admin().Status(ctx, v3); err != nil || st.Position != 0 || len(st.Owners) != 0 {
		t.Fatalf("v3 (manual start) ran before its start: %+v, %v", st, err)
	}
	// 4. Delete v1: its stream and table go; v2 goes on.
	if err := b.admin().Delete(ctx, v1); err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.Stream(ctx, contract.ProjectionStream("wallet_balance")); err == nil {
		t.Fatal("v1's stream outlived its delete")
	}
	var exists bool
	if err := b.pool.QueryRow(ctx, `SELECT to_regclass('wallet_balance') IS NOT NULL`).Scan(&exists); err != nil || exists {
		t.Fatalf("v1's table outlived its delete (%v)", err)
	}
	b.deposit(t, "w4", 1)
	devtest.Eventually(t, 30*time.Second, func() error {
		if got := finals(t, b.derivedOf(t, "wallet_balance_v2"))[projector.EmitSubject("wallet_balance_v2", "wallet/w4")]; got != 101 {
			return fmt.Errorf("v2's w4 balance %d, want 101", got)
		}
		return nil
	})
	// Started, v3 catches up.
	if err := b.admin().Resume(ctx, v3); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		if got, want := b.balances(t, "wallet_balance_v3"), b.balances(t, "wallet_balance_v2"); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("v3 %v, v2 %v", got, want)
		}
		return nil
	})
}

// TestFlushEmitsOncePerBatch: a projection that emits in its flush hook
// emits once per partition per batch, with the final state. Twenty deposits
// to a wallet that reach the projection in one batch (a polling projection
// collects all that arrived since its last look) give one
// WalletBalanceWasChanged carrying the sum.
func TestFlushEmitsOncePerBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for i := range 20 {
		b.deposit(t, "w1", int64(100+i))
		b.deposit(t, "w2", 5)
	}
	b.projector(t, walletBalance(b.pool, projection.Polling(500*time.Millisecond)))
	b.emitter(t)
	b.waitFinals(t)
	perSubject := map[string]int{}
	for _, d := range b.derived(t) {
		perSubject[d.subject]++
	}
	for _, w := range []string{"wallet/w1", "wallet/w2"} {
		if n := perSubject[projector.EmitSubject("wallet_balance", w)]; n != 1 {
			t.Errorf("%s: %d WalletBalanceWasChanged for 20 deposits in one batch, want 1", w, n)
		}
	}
}

// A derived event the stream refuses is not hidden by a later event of its
// subject that the stream took: the emitter retries the first until it
// lands and only then publishes the second, so the stream holds both, in
// order, once its limit is raised.
func TestRefusedEventIsNotOvertakenByTheNext(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	def := walletBalance(b.pool)
	if err := b.admin().Init(ctx, def); err != nil {
		t.Fatal(err)
	}
	own := contract.ProjectionStream("wallet_balance")
	setMaxMsgSize := func(n int32) {
		s, err := b.js.Stream(ctx, own)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		cfg.MaxMsgSize = n
		if _, err := b.js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	setMaxMsgSize(512)
	subj := projector.EmitSubject("wallet_balance", "wallet/w1")
	big := fmt.Sprintf(`{"note":%q}`, strings.Repeat("x", 1024))
	for seq, payload := range []string{big, `{"balance":2}`} {
		if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq)
VALUES ('wallet_balance', 'wallet/w1', $1, $2, $3, 'WalletBalanceWasChanged', $4::jsonb, $3)`,
			subj, fmt.Sprintf("wallet_balance:0:wallet/w1:%d", seq+1), seq+1, payload); err != nil {
			t.Fatal(err)
		}
	}
	e := b.newEmitter(t)
	var se *emitter.StalledError
	if _, err := e.RelayOnce(ctx); !errors.As(err, &se) || len(se.Subjects) != 1 || se.Subjects[0] != subj {
		t.Fatalf("a round whose event the stream refuses returned %v; want a StalledError for %s", err, subj)
	}
	// Tried again once its pause is over, and refused again.
	devtest.Eventually(t, 10*time.Second, func() error {
		if _, err := e.RelayOnce(ctx); !errors.As(err, &se) {
			return fmt.Errorf("round returned %v; want it refused again", err)
		}
		return nil
	})
	if n := len(b.derived(t)); n != 0 {
		t.Fatalf("the stream took %d events while the first was refused; want 0", n)
	}
	setMaxMsgSize(-1)
	b.relayAll(t, e)
	ds := b.derived(t)
	if len(ds) != 2 || ds[0].id != "wallet_balance:0:wallet/w1:1" || ds[1].id != "wallet_balance:0:wallet/w1:2" {
		t.Fatalf("stream holds %+v; want events 1 and 2 in order", ds)
	}
}

// A linked stream removed while the emitter runs is created again and
// gets the derived events linked to it after; none is dropped.
func TestRemovedLinkedStreamIsCreatedAgain(t *testing.T) {
	t.Parallel()
	b := setupWalletBalance(t)
	ctx := context.Background()
	subj := projector.EmitSubject("wallet_balance", "wallet/w1")
	insert := func(seq int) {
		if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq, link_to)
VALUES ('wallet_balance', 'wallet/w1', $1, $2, $3, 'WalletBalanceWasChanged', '{}', $3, 'relinked')`,
			subj, fmt.Sprintf("wallet_balance:0:wallet/w1:%d", seq), seq); err != nil {
			t.Fatal(err)
		}
	}
	e := b.newEmitter(t)
	insert(1)
	b.relayAll(t, e)
	if err := b.js.DeleteStream(ctx, "relinked"); err != nil {
		t.Fatal(err)
	}
	insert(2)
	b.relayAll(t, e)
	s, err := b.js.Stream(ctx, "relinked")
	if err != nil {
		t.Fatalf("linked stream not created again: %v", err)
	}
	m, err := s.GetLastMsgForSubject(ctx, "relinked.>")
	if err != nil {
		t.Fatal(err)
	}
	if id := m.Header.Get(nats.MsgIdHdr); id != "wallet_balance:0:wallet/w1:2" {
		t.Fatalf("linked stream holds %q; want the second event", id)
	}
}

// A subject whose derived event JetStream refuses (here: linked to a stream
// jetproj did not create) stalls alone: its rows wait in the outbox, in
// order, while the other subjects' rows are relayed at once; once the cause
// is gone, the stalled rows go out in order, each once.
func TestRefusedSubjectStallsAlone(t *testing.T) {
	t.Parallel()
	b := setupWalletBalance(t)
	ctx := context.Background()
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "foreign", Subjects: []string{"foreign.>"}}); err != nil {
		t.Fatal(err)
	}
	insert := func(wallet string, seq int, link string) {
		t.Helper()
		if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq, link_to)
VALUES ('wallet_balance', $1, $2, $3, $4, 'WalletBalanceWasChanged', '{}', $4, $5)`,
			"wallet/"+wallet, projector.EmitSubject("wallet_balance", "wallet/"+wallet),
			fmt.Sprintf("wallet_balance:0:wallet/%s:%d", wallet, seq), seq, link); err != nil {
			t.Fatal(err)
		}
	}
	insert("w1", 1, "foreign")
	insert("w1", 2, "")
	insert("w2", 1, "")
	reg := prometheus.NewRegistry()
	b.start(t, func(ctx context.Context, nc *nats.Conn) error {
		e, err := emitter.New(emitter.Config{LeaseTTL: 2 * time.Second, PollInterval: time.Minute}, b.pool, nc, nil, reg)
		if err != nil {
			return err
		}
		return e.Run(ctx)
	})
	ids := func() []string {
		var out []string
		for _, d := range b.derived(t) {
			out = append(out, d.id)
		}
		return out
	}
	devtest.Eventually(t, 15*time.Second, func() error {
		if got := ids(); len(got) != 1 || got[0] != "wallet_balance:0:wallet/w2:1" {
			return fmt.Errorf("stream holds %v; want w2's event alone", got)
		}
		if n := gauge(t, reg, "jetproj_emitter_stalled_subjects"); n != 1 {
			return fmt.Errorf("stalled subjects %v; want 1", n)
		}
		return nil
	})
	// w2 goes on while w1 waits; the notification wakes the relay.
	insert("w2", 2, "")
	devtest.Eventually(t, 15*time.Second, func() error {
		if got := ids(); len(got) != 2 {
			return fmt.Errorf("stream holds %v; want w2's two events", got)
		}
		return nil
	})
	var waiting int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox WHERE partition = 'wallet/w1'`).Scan(&waiting); err != nil {
		t.Fatal(err)
	}
	if waiting != 2 {
		t.Fatalf("%d rows of the stalled subject in the outbox; want 2", waiting)
	}
	if err := b.js.DeleteStream(ctx, "foreign"); err != nil {
		t.Fatal(err)
	}
	want := []string{"wallet_balance:0:wallet/w2:1", "wallet_balance:0:wallet/w2:2", "wallet_balance:0:wallet/w1:1", "wallet_balance:0:wallet/w1:2"}
	devtest.Eventually(t, 40*time.Second, func() error {
		if got := ids(); !slices.Equal(got, want) {
			return fmt.Errorf("stream holds %v; want %v", got, want)
		}
		if n := gauge(t, reg, "jetproj_emitter_stalled_subjects"); n != 0 {
			return fmt.Errorf("stalled subjects %v; want 0", n)
		}
		return nil
	})
	s, err := b.js.Stream(ctx, "foreign")
	if err != nil {
		t.Fatalf("linked stream not created once the foreign one was gone: %v", err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("linked stream: %+v, %v; want w1's first event", info, err)
	}
}

// gauge reads the value of the gauge called name from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return metricValue(t, reg, name).GetGauge().GetValue()
}

// metricValue is the first sample of the metric called name in reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0]
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// However many subjects stall, the others' rows are still reached: stalled
// rows are left out of the next rounds' reads.
func TestManyStalledSubjectsDoNotHoldTheOthers(t *testing.T) {
	t.Parallel()
	b := setupWalletBalance(t)
	ctx := context.Background()
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "foreign", Subjects: []string{"foreign.>"}}); err != nil {
		t.Fatal(err)
	}
	const stalled = 1500
	if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq, link_to)
SELECT 'wallet_balance', 'wallet/s' || i, $1 || i, 'wallet_balance:0:wallet/s' || i || ':1', 1, 'WalletBalanceWasChanged', '{}', 1, 'foreign'
FROM generate_series(1, $2::int) AS i`, projector.EmitSubject("wallet_balance", "wallet/s"), stalled); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq)
VALUES ('wallet_balance', 'wallet/ok', $1, 'wallet_balance:0:wallet/ok:1', 1, 'WalletBalanceWasChanged', '{}', 1)`,
		projector.EmitSubject("wallet_balance", "wallet/ok")); err != nil {
		t.Fatal(err)
	}
	e := b.newEmitter(t)
	devtest.Eventually(t, 60*time.Second, func() error {
		_, err := e.RelayOnce(ctx)
		if se := (*emitter.StalledError)(nil); err != nil && !errors.As(err, &se) {
			return err
		}
		if ds := b.derived(t); len(ds) != 1 || ds[0].id != "wallet_balance:0:wallet/ok:1" {
			return fmt.Errorf("stream holds %v; want the healthy subject's event", ds)
		}
		return nil
	})
	// The next round deletes what the last one relayed.
	if _, err := e.RelayOnce(ctx); err != nil && !errors.As(err, new(*emitter.StalledError)) {
		t.Fatal(err)
	}
	var n int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != stalled {
		t.Fatalf("%d rows in the outbox; want the %d stalled ones", n, stalled)
	}
}

// counter reads the value of the counter called name from reg.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return metricValue(t, reg, name).GetCounter().GetValue()
}

// Partition keys that differ only in bytes a header cannot carry each get
// their derived event onto the stream — even from rows whose msg_id was
// written with the raw key, as projectors did before keys were escaped —
// and the Partition header gives the key back.
func TestKeysDifferingInUnsafeBytesAreAllEmitted(t *testing.T) {
	t.Parallel()
	b := setupWalletBalance(t)
	ctx := context.Background()
	keys := []string{"wallet/a b", "wallet/a\nb", "wallet/a\r\nb", "wallet/a\tb", "wallet/ a b", "wallet/a b "}
	for _, k := range keys {
		if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq)
VALUES ('wallet_balance', $1, $2, $3, 1, 'WalletBalanceWasChanged', '{}', 1)`,
			k, projector.EmitSubject("wallet_balance", k), "wallet_balance:0:"+k+":1"); err != nil {
			t.Fatal(err)
		}
	}
	e := b.newEmitter(t)
	b.relayAll(t, e)
	ds := b.derived(t)
	if len(ds) != len(keys) {
		t.Fatalf("stream holds %d events for %d partitions: %v", len(ds), len(keys), ds)
	}
	s, err := b.js.Stream(ctx, contract.ProjectionStream("wallet_balance"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		m, err := s.GetLastMsgForSubject(ctx, projector.EmitSubject("wallet_balance", k))
		if err != nil {
			t.Fatalf("%q: %v", k, err)
		}
		if got, err := derivedpkg.UnescapeKey(m.Header.Get(contract.HeaderPartition)); err != nil || got != k {
			t.Errorf("%q: Partition header %q gives %q, %v", k, m.Header.Get(contract.HeaderPartition), got, err)
		}
	}
}

// A publish that JetStream acknowledges as a duplicate of a message that
// is not its event (here: another subject's message with the same id) is
// not taken for delivered: the row stays in the outbox, its subject
// stalls with the cause and a metric, the others go on; once the
// duplicate window has passed, it is published.
func TestUnexpectedDuplicateStallsItsSubject(t *testing.T) {
	t.Parallel()
	b := setupWalletBalance(t)
	ctx := context.Background()
	own := contract.ProjectionStream("wallet_balance")
	// Another message holds w1's first id.
	squatter := nats.NewMsg(projector.EmitSubject("wallet_balance", "wallet/squatter"))
	squatter.Header.Set(nats.MsgIdHdr, "wallet_balance:0:wallet/w1:1")
	if _, err := b.js.PublishMsg(ctx, squatter); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"w1", "w2"} {
		if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq)
VALUES ('wallet_balance', $1, $2, $3, 1, 'WalletBalanceWasChanged', '{}', 1)`,
			"wallet/"+w, projector.EmitSubject("wallet_balance", "wallet/"+w), "wallet_balance:0:wallet/"+w+":1"); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	reg := prometheus.NewRegistry()
	e, err := emitter.New(emitter.Config{}, b.pool, nc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	w1 := projector.EmitSubject("wallet_balance", "wallet/w1")
	var se *emitter.StalledError
	if _, err := e.RelayOnce(ctx); !errors.As(err, &se) || !slices.Equal(se.Subjects, []string{w1}) || !errors.Is(err, derivedpkg.ErrUnexpectedDuplicate) {
		t.Fatalf("round returned %v; want w1 stalled by an unexpected duplicate", err)
	}
	if n := counter(t, reg, "jetproj_emitter_unexpected_duplicates_total"); n != 1 {
		t.Fatalf("unexpected duplicates metric %v; want 1", n)
	}
	if _, err := e.RelayOnce(ctx); err != nil && !errors.As(err, &se) {
		t.Fatal(err)
	}
	var left []string
	rows, err := b.pool.Query(ctx, `SELECT partition FROM jetproj.outbox`)
	if err != nil {
		t.Fatal(err)
	}
	left, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(left, []string{"wallet/w1"}) {
		t.Fatalf("outbox holds %v; want w1's row alone", left)
	}
	// The window passes: w1's event goes out.
	s, err := b.js.Stream(ctx, own)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Duplicates = 100 * time.Millisecond
	if _, err := b.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	b.relayAll(t, e)
	m, err := s.GetLastMsgForSubject(ctx, w1)
	if err != nil {
		t.Fatalf("w1's event never published: %v", err)
	}
	if id := m.Header.Get(nats.MsgIdHdr); id != "wallet_balance:0:wallet/w1:1" {
		t.Fatalf("w1's event has id %q", id)
	}
}

// With pages much smaller than the outbox, a round reads page after page
// while it publishes: a subject refused in one page keeps its rows of the
// later pages in the outbox, in order, while the other subjects' rows of
// every page go out; once the cause is gone, the refused subject's rows go
// out in order, each once.
func TestRefusedSubjectWaitsAcrossPages(t *testing.T) {
	t.Parallel()
	b := setupWalletBalance(t)
	ctx := context.Background()
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "foreign", Subjects: []string{"foreign.>"}}); err != nil {
		t.Fatal(err)
	}
	const seqs = 20
	for seq := 1; seq <= seqs; seq++ {
		for _, w := range []string{"w1", "w2", "w3"} {
			link := ""
			if w == "w1" && seq == 3 {
				link = "foreign" // refused: w1 stops at its third event
			}
			if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq, link_to)
VALUES ('wallet_balance', $1, $2, '', $3, 'WalletBalanceWasChanged', '{}', $3, $4)`,
				"wallet/"+w, projector.EmitSubject("wallet_balance", "wallet/"+w), seq, link); err != nil {
				t.Fatal(err)
			}
		}
	}
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e, err := emitter.New(emitter.Config{BatchSize: 4}, b.pool, nc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	perSubject := func() map[string][]string {
		out := map[string][]string{}
		for _, d := range b.derived(t) {
			out[d.subject] = append(out[d.subject], d.id)
		}
		return out
	}
	want := func(w string, n int) []string {
		var ids []string
		for seq := 1; seq <= n; seq++ {
			ids = append(ids, fmt.Sprintf("wallet_balance:0:wallet/%s:%d", w, seq))
		}
		return ids
	}
	subj := func(w string) string { return projector.EmitSubject("wallet_balance", "wallet/"+w) }
	devtest.Eventually(t, 20*time.Second, func() error {
		if _, err := e.RelayOnce(ctx); err != nil && !errors.As(err, new(*emitter.StalledError)) {
			return err
		}
		got := perSubject()
		for w, n := range map[string]int{"w1": 2, "w2": seqs, "w3": seqs} {
			if !slices.Equal(got[subj(w)], want(w, n)) {
				return fmt.Errorf("%s: stream holds %v; want %d events in order", w, got[subj(w)], n)
			}
		}
		return nil
	})
	var waiting int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox WHERE partition = 'wallet/w1'`).Scan(&waiting); err != nil {
		t.Fatal(err)
	}
	if waiting != seqs-2 {
		t.Fatalf("%d rows of the refused subject in the outbox; want %d", waiting, seqs-2)
	}
	if err := b.js.DeleteStream(ctx, "foreign"); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 40*time.Second, func() error {
		if _, err := e.RelayOnce(ctx); err != nil && !errors.As(err, new(*emitter.StalledError)) {
			return err
		}
		if got := perSubject()[subj("w1")]; !slices.Equal(got, want("w1", seqs)) {
			return fmt.Errorf("w1: stream holds %v", got)
		}
		return nil
	})
}
