package emitter_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projector"
)

// TestOutboxDrainsWhateverPlanPostgreSQLPicks drains a large outbox with
// PostgreSQL's planner pushed to its worst choices for the emitter's
// statement: no hash joins or aggregates, no index scans, work_mem at its
// minimum. The plan PostgreSQL picks depends on the outbox's statistics,
// which a queue table's autoanalyze takes at random moments (empty, half
// full): a benchmark run once spent 105 CPU-seconds of PostgreSQL on a
// 180,000-row drain that usually takes 2. The statement must cost about a
// scan per page whatever the plan: with the ids to delete and to leave out
// joined (IN / NOT IN a subquery), this drain took minutes.
func TestOutboxDrainsWhateverPlanPostgreSQLPicks(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setupWalletBalance(t)
	ctx := context.Background()
	const rows, subjects = 30_000, 3_000
	if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq)
SELECT 'wallet_balance', 'wallet/w' || (i % $2::int), $1 || (i % $2::int), 'wallet_balance:0:wallet/w' || (i % $2::int) || ':' || i, i, 'WalletBalanceWasChanged', '{}', i
FROM generate_series(1, $3::int) AS i`, projector.EmitSubject("wallet_balance", "wallet/w"), subjects, rows); err != nil {
		t.Fatal(err)
	}

	cfg, err := pgxpool.ParseConfig(b.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"enable_hashjoin": "off", "enable_hashagg": "off", "enable_mergejoin": "off",
		"enable_indexscan": "off", "enable_bitmapscan": "off", "work_mem": "64kB",
	} {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	worst, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(worst.Close)
	nc, _ := devtest.Connect(t, b.nats)
	e, err := emitter.New(emitter.Config{BatchSize: 5000}, worst, nc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}

	began := time.Now()
	b.relayWithin(t, e, 20*time.Second)
	s, err := b.js.Stream(ctx, contract.ProjectionStream("wallet_balance"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != rows {
		t.Fatalf("%d derived events on the stream, want %d", info.State.Msgs, rows)
	}
	t.Logf("drained %d rows in %v with the planner at its worst", rows, time.Since(began).Round(time.Millisecond))
}
