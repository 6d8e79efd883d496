package projector_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projection"
)

// pgBalance is wallet_balance with a PostgreSQL read model; applied counts
// the events each row has seen, so a double application shows.
func pgBalance(pool *pgxpool.Pool, inFlight *sync.Map, overlaps *atomic.Int64, opts ...projection.Option) *projection.Projection[struct{}] {
	p := projection.New[struct{}]("wallet_balance_pg", append([]projection.Option{projection.FromAggregates("wallet"), projection.Postgres(pool),
		projection.BatchSize(100),
		projection.OnInit(func(ctx context.Context, tx projectionTx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS balances (wallet text PRIMARY KEY, owner text, cents bigint NOT NULL DEFAULT 0, applied int NOT NULL DEFAULT 0, last_version bigint NOT NULL DEFAULT 0)`)
			return err
		}),
		projection.OnReset(func(ctx context.Context, tx projectionTx) error {
			_, err := tx.Exec(ctx, `TRUNCATE balances`)
			return err
		})}, opts...)...)
	enter := func(key string) func() {
		if v, loaded := inFlight.LoadOrStore(key, true); loaded && v.(bool) {
			overlaps.Add(1)
		}
		inFlight.Store(key, true)
		return func() { inFlight.Store(key, false) }
	}
	apply := func(ctx context.Context, c *projection.Context[struct{}], m projection.Meta, owner string, delta int64) error {
		defer enter(c.Partition())()
		tag, err := c.Tx().Exec(ctx, `
INSERT INTO balances (wallet, owner, cents, applied, last_version) VALUES ($1, $2, $3, 1, $4)
ON CONFLICT (wallet) DO UPDATE SET cents = balances.cents + $3, applied = balances.applied + 1,
    owner = coalesce(nullif($2, ''), balances.owner), last_version = $4
WHERE balances.last_version = $4 - 1`, m.AggregateID, owner, delta, m.Version)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("version %d of %s out of order", m.Version, m.AggregateID)
		}
		return nil
	}
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[WalletOpened]) error {
		return apply(ctx, c, e.Meta, e.Data.Owner, 0)
	})
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[MoneyWasAddedToWallet]) error {
		return apply(ctx, c, e.Meta, "", e.Data.Amount)
	})
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[MoneyWasWithdrawnFromWallet]) error {
		return apply(ctx, c, e.Meta, "", -e.Data.Amount)
	})
	return p
}

func (b *bundle) waitTable(t *testing.T, pool *pgxpool.Pool, within time.Duration) {
	t.Helper()
	devtest.Eventually(t, within, func() error {
		rows, err := pool.Query(context.Background(), `SELECT wallet, owner, cents, applied FROM balances`)
		if err != nil {
			return err
		}
		got := map[string]Balance{}
		for rows.Next() {
			var w, o string
			var cents int64
			var applied int
			if err := rows.Scan(&w, &o, &cents, &applied); err != nil {
				return err
			}
			got["wallet/"+w] = Balance{Owner: o, Cents: cents, Count: applied}
		}
		if rows.Err() != nil {
			return rows.Err()
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(got) != len(b.fold) {
			return fmt.Errorf("%d rows, want %d", len(got), len(b.fold))
		}
		for k, want := range b.fold {
			if got[k] != want {
				return fmt.Errorf("%s: %+v, want %+v", k, got[k], want)
			}
		}
		return nil
	})
}

// TestPostgresProjectionExactlyOnceWithReplicas is G2 and G3 in process:
// replicas join, are killed and leave while events arrive; the read model
// equals the fold, no row saw an event twice (applied = events), versions
// were applied in order, and no partition ran on two replicas at once.
func TestPostgresProjectionExactlyOnceWithReplicas(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	pool := devtest.Pool(t)
	var inFlight sync.Map
	var overlaps atomic.Int64
	def := func() *projection.Projection[struct{}] { return pgBalance(pool, &inFlight, &overlaps) }

	b.publishWallets(t, 300, 4)
	r1 := b.run(t, "r1", def())
	var wg sync.WaitGroup
	wg.Go(func() { b.publishWallets(t, 300, 6) })
	r2 := b.run(t, "r2", def())
	devtest.Eventually(t, 20*time.Second, func() error {
		if n := len(slotsOf(r2)); n == 0 {
			return fmt.Errorf("r2 owns no slot yet")
		}
		return nil
	})
	r1.kill(t)
	r3 := b.run(t, "r3", def())
	r2.stop(t) // graceful: its slots move at once
	wg.Wait()
	b.waitTable(t, pool, 60*time.Second)
	if n := overlaps.Load(); n != 0 {
		t.Fatalf("a partition was applied on two replicas at once %d times", n)
	}
	_ = r3
}

// TestIdleCostsNothing is G7: with no traffic the projector's process uses
// almost no CPU, and a new event is still picked up at once.
func TestIdleCostsNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("CPU use is not meaningful under the race detector")
	}
	b := setup(t)
	b.publishWallets(t, 50, 2)
	b.run(t, "r1", walletBalance("wallet_balance"))
	b.waitFold(t, "wallet_balance", 30*time.Second)
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	// Let start-up work settle: wait until a second passes with little CPU.
	var used time.Duration
	const window = 2 * time.Second
	devtest.Eventually(t, 20*time.Second, func() error {
		before, start := cpu(), time.Now()
		time.Sleep(window) // measuring an interval, not synchronising
		used = cpu() - before
		if frac := float64(used) / float64(time.Since(start)); frac > 0.03 {
			return fmt.Errorf("idle process used %.1f%% of a core", 100*frac)
		}
		return nil
	})
	t.Logf("idle: %v CPU over %v (server included)", used, window)
	b.publish(t, "w1", "MoneyWasAddedToWallet", `{"amount":1}`)
	b.waitFold(t, "wallet_balance", 5*time.Second)
}

// TestCatchUpBatchesCrossAReplicaKill: far behind, batches grow to
// CatchUpBatchSize; a replica killed in the middle of such a backlog loses
// and doubles nothing (each row counts its events once, in version order).
func TestCatchUpBatchesCrossAReplicaKill(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	pool := devtest.Pool(t)
	var inFlight sync.Map
	var overlaps atomic.Int64
	def := func() *projection.Projection[struct{}] {
		return pgBalance(pool, &inFlight, &overlaps, projection.CatchUpBatchSize(2000))
	}
	b.publishWallets(t, 400, 24)
	r1, reg := b.runWithRegistry(t, "r1", def())
	devtest.Eventually(t, 30*time.Second, func() error {
		if n := counter(t, reg, "jetproj_projector_messages_total", "wallet_balance_pg"); n < 2000 {
			return fmt.Errorf("%d messages handled", n)
		}
		return nil
	})
	r1.kill(t)
	if batches, msgs := histogram(t, reg, "jetproj_projector_batch_messages"); batches == 0 || msgs/batches <= 100 {
		t.Fatalf("%d batches of %d messages in all: catch-up batches did not grow past BatchSize(100)", batches, msgs)
	}
	b.run(t, "r2", def())
	b.waitTable(t, pool, 60*time.Second)
	if n := overlaps.Load(); n != 0 {
		t.Fatalf("a partition was applied on two replicas at once %d times", n)
	}
}

// histogram returns a histogram's count and sum.
func histogram(t *testing.T, reg *prometheus.Registry, name string) (count, sum uint64) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				count += m.GetHistogram().GetSampleCount()
				sum += uint64(m.GetHistogram().GetSampleSum())
			}
		}
	}
	return count, sum
}
