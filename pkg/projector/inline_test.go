package projector_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// errOverdrawn is the inline handler's refusal: the command sees it.
var errOverdrawn = errors.New("wallet overdrawn")

// inlineWallets is a wallet read model for inline use. Its state is the
// balance, so a withdrawal beyond it fails the append; applied counts the
// events each row saw, so a double application shows; the flush hook
// emits one WalletBalanceWasChanged per batch.
func inlineWallets(pool *pgxpool.Pool, name string) *projection.Projection[inlineState] {
	p := projection.New[inlineState](name, projection.FromAggregates("wallet"), projection.Postgres(pool), projection.Inline(),
		projection.OnInit(func(ctx context.Context, tx projectionTx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS inline_wallets (wallet text PRIMARY KEY, owner text NOT NULL DEFAULT '',
    cents bigint NOT NULL DEFAULT 0, applied int NOT NULL DEFAULT 0, last_version bigint NOT NULL DEFAULT 0)`)
			return err
		}),
		projection.OnReset(func(ctx context.Context, tx projectionTx) error {
			_, err := tx.Exec(ctx, `TRUNCATE inline_wallets`)
			return err
		}))
	write := func(c *projection.Context[inlineState], m projection.Meta, owner string) error {
		// No guard: an event applied twice counts twice in applied (and
		// in the state, hence cents).
		return c.Exec(`INSERT INTO inline_wallets (wallet, owner, cents, applied, last_version) VALUES ($1, $2, $3, 1, $4)
ON CONFLICT (wallet) DO UPDATE SET cents = $3, applied = inline_wallets.applied + 1, owner = coalesce(nullif($2, ''), inline_wallets.owner),
    last_version = $4`, m.AggregateID, owner, c.State.Cents, m.Version)
	}
	projection.On(p, func(ctx context.Context, c *projection.Context[inlineState], e projection.Event[WalletOpened]) error {
		return write(c, e.Meta, e.Data.Owner)
	})
	projection.On(p, func(ctx context.Context, c *projection.Context[inlineState], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Cents += e.Data.Amount
		return write(c, e.Meta, "")
	})
	projection.On(p, func(ctx context.Context, c *projection.Context[inlineState], e projection.Event[MoneyWasWithdrawnFromWallet]) error {
		if e.Data.Amount > c.State.Cents {
			return fmt.Errorf("%w: %d cents, %d asked", errOverdrawn, c.State.Cents, e.Data.Amount)
		}
		c.State.Cents -= e.Data.Amount
		return write(c, e.Meta, "")
	})
	projection.OnFlush(p, func(ctx context.Context, c *projection.Context[inlineState]) error {
		return c.Emit("WalletBalanceWasChanged", map[string]any{"walletId": c.Partition(), "balance": c.State.Cents})
	})
	return p
}

type inlineState struct {
	Cents int64 `json:"cents"`
}

type walletRow struct {
	Owner   string
	Cents   int64
	Applied int
	Version int64
}

func readWallets(t *testing.T, pool *pgxpool.Pool) map[string]walletRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT wallet, owner, cents, applied, last_version FROM inline_wallets`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]walletRow{}
	for rows.Next() {
		var w string
		var r walletRow
		if err := rows.Scan(&w, &r.Owner, &r.Cents, &r.Applied, &r.Version); err != nil {
			t.Fatal(err)
		}
		out[w] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func inlinePool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool := devtest.Pool(t)
	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

func newInline(t *testing.T, p projection.Definer, opts ...projector.InlineOption) *projector.InlineProjection {
	t.Helper()
	ip, err := projector.Inline(p, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := ip.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return ip
}

func opened(owner string) eventstore.NewEvent {
	return eventstore.NewEvent{Type: "WalletOpened", Payload: WalletOpened{Owner: owner}}
}

func added(cents int64) eventstore.NewEvent {
	return eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: MoneyWasAddedToWallet{Amount: cents}}
}

func withdrawn(cents int64) eventstore.NewEvent {
	return eventstore.NewEvent{Type: "MoneyWasWithdrawnFromWallet", Payload: MoneyWasWithdrawnFromWallet{Amount: cents}}
}

// TestInlineAppliesInTheAppendingTransaction: the read model, the
// partition's record and the derived event are written with the events;
// a rolled-back append leaves nothing; a handler error fails the append.
func TestInlineAppliesInTheAppendingTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := inlinePool(t)
	def := inlineWallets(pool, "inline_tx")
	store := eventstore.WithInline(newInline(t, def))

	res, err := store.Append(ctx, pool, "wallet", "w1", eventstore.ExpectNoStream, opened("ann"), added(500))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := readWallets(t, pool)["w1"], (walletRow{Owner: "ann", Cents: 500, Applied: 2, Version: 2}); got != want {
		t.Fatalf("read model after the append: %+v, want %+v", got, want)
	}
	var pos, seq int64
	if err := pool.QueryRow(ctx, `SELECT position, seq FROM jetproj.partitions WHERE projection = 'inline_tx' AND partition = 'wallet/w1'`).Scan(&pos, &seq); err != nil {
		t.Fatal(err)
	}
	if pos != res.LastPosition || seq != 0 {
		t.Fatalf("record: position %d, seq %d; want position %d, seq 0", pos, seq, res.LastPosition)
	}
	var srcPos int64
	var subj, typ string
	if err := pool.QueryRow(ctx, `SELECT source_position, subject, event_type FROM jetproj.outbox WHERE projection = 'inline_tx'`).Scan(&srcPos, &subj, &typ); err != nil {
		t.Fatal(err)
	}
	if srcPos != res.LastPosition || subj != "project.inline_tx.wallet.w1" || typ != "WalletBalanceWasChanged" {
		t.Fatalf("outbox row: %d %s %s", srcPos, subj, typ)
	}

	// Rolled back with the caller's transaction: nothing stays.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.AppendTx(ctx, tx, "wallet", "w1", 2, added(100)); err != nil {
		t.Fatal(err)
	}
	var inTx int64
	if err := tx.QueryRow(ctx, `SELECT cents FROM inline_wallets WHERE wallet = 'w1'`).Scan(&inTx); err != nil {
		t.Fatal(err)
	}
	if inTx != 600 {
		t.Fatalf("inside the transaction: %d cents, want 600", inTx)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readWallets(t, pool)["w1"]; got.Cents != 500 || got.Applied != 2 {
		t.Fatalf("after rollback: %+v", got)
	}
	if n := count(t, pool, `SELECT count(*) FROM jetproj.outbox WHERE projection = 'inline_tx'`); n != 1 {
		t.Fatalf("outbox after rollback: %d rows, want 1", n)
	}

	// A handler error fails the append: no event, no change.
	_, err = store.Append(ctx, pool, "wallet", "w1", 2, withdrawn(501))
	var ie *projector.InlineError
	if !errors.Is(err, eventstore.ErrInlineProjection) || !errors.Is(err, errOverdrawn) || !errors.As(err, &ie) || ie.EventType != "MoneyWasWithdrawnFromWallet" {
		t.Fatalf("overdraft: %v", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM eventstore.events WHERE aggregate_id = 'w1'`); n != 2 {
		t.Fatalf("%d events stored, want 2", n)
	}
	if _, err := store.Append(ctx, pool, "wallet", "w1", 2, withdrawn(500)); err != nil {
		t.Fatal(err)
	}
	if got := readWallets(t, pool)["w1"]; got.Cents != 0 || got.Applied != 3 {
		t.Fatalf("after the withdrawal: %+v", got)
	}
}

// TestInlineConcurrentAppends: of two appends at the same expected
// version, one wins; the loser's inline writes vanish with it.
func TestInlineConcurrentAppends(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := inlinePool(t)
	store := eventstore.WithInline(newInline(t, inlineWallets(pool, "inline_race")))
	if _, err := store.Append(ctx, pool, "wallet", "w1", eventstore.ExpectNoStream, opened("ann")); err != nil {
		t.Fatal(err)
	}
	// The first append holds its transaction open while the second runs;
	// whichever way they interleave, the second must lose.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.AppendTx(ctx, tx, "wallet", "w1", 1, added(100)); err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() {
		_, err := store.Append(ctx, pool, "wallet", "w1", 1, added(7))
		second <- err
	}()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-second; !errors.Is(err, eventstore.ErrVersionConflict) {
		t.Fatalf("second append: %v, want a version conflict", err)
	}
	// Many writers with ExpectAny: each append applied once, in order.
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for range 4 {
		wg.Go(func() {
			for range 10 {
				_, err := store.Append(ctx, pool, "wallet", "w1", eventstore.ExpectAny, added(1))
				if err != nil && !errors.Is(err, eventstore.ErrVersionConflict) {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n := count(t, pool, `SELECT count(*) FROM eventstore.events WHERE aggregate_id = 'w1'`)
	got := readWallets(t, pool)["w1"]
	if got.Applied != n || got.Version != int64(n) || got.Cents != int64(100+n-2) {
		t.Fatalf("read model %+v after %d events", got, n)
	}
	if o := count(t, pool, `SELECT count(*) FROM jetproj.outbox WHERE projection = 'inline_race'`); o != n {
		t.Fatalf("%d outbox rows for %d appends of one event", o, n)
	}
}

// TestInlineCatchesUpOnEventsAppendedWithout: events appended without the
// inline projection (plain Append, another language's INSERT) are applied
// first, quietly, by the next inline append of their aggregate.
func TestInlineCatchesUpOnEventsAppendedWithout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := inlinePool(t)
	store := eventstore.WithInline(newInline(t, inlineWallets(pool, "inline_gap")))
	if _, err := eventstore.Append(ctx, pool, "wallet", "w1", eventstore.ExpectNoStream, opened("bob"), added(300)); err != nil {
		t.Fatal(err)
	}
	if len(readWallets(t, pool)) != 0 {
		t.Fatal("plain Append applied the inline projection")
	}
	if _, err := store.Append(ctx, pool, "wallet", "w1", 2, withdrawn(200)); err != nil {
		t.Fatal(err)
	}
	if got, want := readWallets(t, pool)["w1"], (walletRow{Owner: "bob", Cents: 100, Applied: 3, Version: 3}); got != want {
		t.Fatalf("read model %+v, want %+v", got, want)
	}
	if o := count(t, pool, `SELECT count(*) FROM jetproj.outbox WHERE projection = 'inline_gap'`); o != 1 {
		t.Fatalf("%d outbox rows, want 1 (the events caught up on emit nothing)", o)
	}
}

// TestInlineProjectionRefused: Inline wants a definition marked Inline,
// partitioned by aggregate, with a PostgreSQL read model.
func TestInlineProjectionRefused(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://unused")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	noop := func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[WalletOpened]) error {
		return nil
	}
	for name, p := range map[string]*projection.Projection[struct{}]{
		"not_marked": projection.New[struct{}]("not_marked", projection.FromAggregates("wallet"), projection.Postgres(pool)),
		"global":     projection.New[struct{}]("global", projection.FromAggregates("wallet"), projection.Postgres(pool), projection.Inline(), projection.Global()),
		"kv":         projection.New[struct{}]("kv", projection.FromAggregates("wallet"), projection.Inline()),
		"subjects":   projection.New[struct{}]("subjects", projection.FromSubjects("S", "s.>"), projection.Postgres(pool), projection.Inline()),
	} {
		projection.On(p, noop)
		_, err := projector.Inline(p)
		want := projection.ErrInvalid
		if name == "not_marked" {
			want = projector.ErrNotInline
		}
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
}

// inlineServers runs NATS, a feeder and an emitter for pool's store.
func inlineServers(t *testing.T, pool *pgxpool.Pool) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	n := devtest.NATS(t)
	nc, js := devtest.Connect(t, n)
	if _, _, err := feeder.EnsureStream(ctx, js, feeder.Config{}.Defaults()); err != nil {
		t.Fatal(err)
	}
	run := func(name string, f func(ctx context.Context) error) {
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- f(rctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
	f, err := feeder.New(feeder.Config{}.Defaults(), feeder.Deps{Pool: pool, NC: nc, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	run("feeder", f.Run)
	e, err := emitter.New(emitter.Config{LeaseTTL: 2 * time.Second, PollInterval: 100 * time.Millisecond}, pool, nc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	run("emitter", e.Run)
	return nc, js
}

// runnerCaughtUp waits until the feeder has published every event of the
// wallets and the runner has passed them: each wallet's record is at its
// last message's sequence.
func runnerCaughtUp(t *testing.T, js jetstream.JetStream, pool *pgxpool.Pool, name string, wallets []string) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, contract.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 20*time.Second, func() error {
		for _, w := range wallets {
			var head int64
			if err := pool.QueryRow(ctx, `SELECT max(position) FROM eventstore.events WHERE aggregate_type = 'wallet' AND aggregate_id = $1`, w).Scan(&head); err != nil {
				return err
			}
			last, err := s.GetLastMsgForSubject(ctx, "events.wallet."+w)
			if err != nil {
				return err
			}
			if pos := last.Header.Get(contract.HeaderEventPosition); pos != fmt.Sprint(head) {
				return fmt.Errorf("%s: the stream is at position %s, the store at %d", w, pos, head)
			}
			var seq int64
			if err := pool.QueryRow(ctx, `SELECT seq FROM jetproj.partitions WHERE projection = $1 AND partition = $2`, name, "wallet/"+w).Scan(&seq); err != nil {
				return err
			}
			if uint64(seq) != last.Sequence {
				return fmt.Errorf("%s at seq %d, stream at %d", w, seq, last.Sequence)
			}
		}
		return nil
	})
}

// derivedOnStream counts the derived events on the projection's stream
// and fails on a repeated message id.
func derivedOnStream(ctx context.Context, js jetstream.JetStream, name string) (int, error) {
	s, err := js.Stream(ctx, contract.ProjectionStream(name))
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	seen := map[string]bool{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			return 0, err
		}
		id := m.Header.Get(nats.MsgIdHdr)
		if seen[id] {
			return 0, fmt.Errorf("derived event %s twice", id)
		}
		seen[id] = true
	}
	return int(info.State.Msgs), nil
}

// TestInlineWithTheRunner: the same projection runs inline and in a
// projector at once. The runner skips what was applied inline (applied
// counts stay at one per event; the version check in the statement would
// refuse a second application), applies what was appended without it,
// and each derived event reaches the stream once. A rebuild through the
// stream gives the same read model and emits nothing.
func TestInlineWithTheRunner(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := inlinePool(t)
	nc, js := inlineServers(t, pool)
	const name = "inline_runner"
	def := inlineWallets(pool, name)
	if err := projector.NewAdmin(js, projector.AdminOptions{}).Init(ctx, def); err != nil {
		t.Fatal(err)
	}
	reg, err := projector.OpenRegistry(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if err := reg.Watch(wctx); err != nil {
		t.Fatal(err)
	}
	store := eventstore.WithInline(newInline(t, def, projector.InlineRegistry(reg)))

	p, err := projector.New(nc, projector.Options{Replica: "r1", LeaseTTL: 2 * time.Second, Logger: testLogger(t)}, inlineWallets(pool, name))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stopRunner := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	defer func() {
		stopRunner()
		if err := <-done; err != nil {
			t.Errorf("projector: %v", err)
		}
	}()

	// Inline appends while the runner follows the stream, and some plain
	// appends the runner alone applies.
	wallets := []string{"a", "b", "c", "d", "e"}
	inlineAppends := 0
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, w := range wallets {
		wg.Go(func() {
			n := 0
			if _, err := store.Append(ctx, pool, "wallet", w, eventstore.ExpectNoStream, opened("owner-"+w)); err != nil {
				t.Error(err)
				return
			}
			n++
			for i := range 20 {
				var err error
				if i%5 == 4 {
					_, err = eventstore.Append(ctx, pool, "wallet", w, eventstore.ExpectAny, added(int64(i)))
				} else {
					_, err = store.Append(ctx, pool, "wallet", w, eventstore.ExpectAny, added(int64(i)))
					n++
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
			mu.Lock()
			inlineAppends += n
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	runnerCaughtUp(t, js, pool, name, wallets)
	want := map[string]walletRow{}
	for _, w := range wallets {
		want[w] = walletRow{Owner: "owner-" + w, Cents: 190, Applied: 21, Version: 21}
	}
	assertWallets := func(when string) {
		t.Helper()
		got := readWallets(t, pool)
		if len(got) != len(want) {
			t.Fatalf("%s: %d wallets, want %d", when, len(got), len(want))
		}
		for w, row := range want {
			if got[w] != row {
				t.Fatalf("%s: wallet %s %+v, want %+v", when, w, got[w], row)
			}
		}
	}
	assertWallets("inline and runner")
	var parked int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.partitions WHERE projection = $1 AND (parked IS NOT NULL OR failing IS NOT NULL)`, name).Scan(&parked); err != nil || parked != 0 {
		t.Fatalf("%d partitions parked or failing (%v)", parked, err)
	}

	// Derived events: one per inline append (the flush of its batch), and
	// from the runner at most one per batch of events it applied itself.
	// Each reaches the stream once: wait for the outbox to drain.
	devtest.Eventually(t, 20*time.Second, func() error {
		if n := count(t, pool, `SELECT count(*) FROM jetproj.outbox WHERE projection = $1`, name); n > 0 {
			return fmt.Errorf("%d outbox rows left", n)
		}
		return nil
	})
	emittedRows := count(t, pool, `SELECT coalesce(sum(emitted), 0)::int FROM jetproj.partitions WHERE projection = $1`, name)
	onStream, err := derivedOnStream(ctx, js, name)
	if err != nil {
		t.Fatal(err)
	}
	if onStream != emittedRows || onStream < inlineAppends || onStream > inlineAppends+len(wallets)*4 {
		t.Fatalf("%d derived events on the stream, %d counted by the records, %d inline appends", onStream, emittedRows, inlineAppends)
	}

	// Rebuild through the stream: the same read model, nothing emitted.
	if err := projector.NewAdmin(js, projector.AdminOptions{}).Reset(ctx, def); err != nil {
		t.Fatal(err)
	}
	runnerCaughtUp(t, js, pool, name, wallets)
	assertWallets("rebuilt")
	// An inline append after the rebuild continues from the rebuilt
	// record and emits with the new generation.
	if _, err := store.Append(ctx, pool, "wallet", "a", 21, withdrawn(90)); err != nil {
		t.Fatal(err)
	}
	want["a"] = walletRow{Owner: "owner-a", Cents: 100, Applied: 22, Version: 22}
	assertWallets("after the rebuild")
	runnerCaughtUp(t, js, pool, name, wallets)
	assertWallets("runner after the rebuild")
	devtest.Eventually(t, 20*time.Second, func() error {
		n, err := derivedOnStream(ctx, js, name)
		if err != nil {
			return err
		}
		if n != onStream+1 {
			return fmt.Errorf("%d derived events, want %d", n, onStream+1)
		}
		if o := count(t, pool, `SELECT count(*) FROM jetproj.outbox WHERE projection = $1`, name); o > 0 {
			return fmt.Errorf("%d outbox rows left", o)
		}
		return nil
	})
}
