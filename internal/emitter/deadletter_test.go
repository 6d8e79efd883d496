package emitter_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	derivedpkg "github.com/jetproj/jetproj/internal/derived"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projector"
)

// insertRow writes one outbox row of wallet_balance's partition wallet/<w>.
func (b *bundle) insertRow(t *testing.T, w string, seq int, payload string) {
	t.Helper()
	if _, err := b.pool.Exec(context.Background(), `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq)
VALUES ('wallet_balance', $1, $2, $3, $4, 'WalletBalanceWasChanged', $5::jsonb, $4)`,
		"wallet/"+w, projector.EmitSubject("wallet_balance", "wallet/"+w), fmt.Sprintf("wallet_balance:0:wallet/%s:%d", w, seq), seq, payload); err != nil {
		t.Fatal(err)
	}
}

// deadRows lists the dead letter's rows as partition:seq (reason), in id order.
func (b *bundle) deadRows(t *testing.T) (rows, reasons []string) {
	t.Helper()
	r, err := b.pool.Query(context.Background(), `SELECT partition, emit_seq, reason FROM jetproj.outbox_dead ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for r.Next() {
		var p, reason string
		var seq int64
		if err := r.Scan(&p, &seq, &reason); err != nil {
			t.Fatal(err)
		}
		rows, reasons = append(rows, fmt.Sprintf("%s:%d", p, seq)), append(reasons, reason)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	return rows, reasons
}

func (b *bundle) outboxRows(t *testing.T) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), `SELECT count(*) FROM jetproj.outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *bundle) setMaxMsgSize(t *testing.T, stream string, n int32) {
	t.Helper()
	ctx := context.Background()
	s, err := b.js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgSize = n
	if _, err := b.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
}

func relayRound(ctx context.Context, e *emitter.Emitter) error {
	if _, err := e.RelayOnce(ctx); err != nil && !errors.As(err, new(*emitter.StalledError)) {
		return err
	}
	return nil
}

// A derived event refused for good (over the stream's max_msg_size, told by
// JetStream's error code) moves to jetproj.outbox_dead at once, with its
// subject's later rows: the outbox does not grow with them, nothing of the
// subject reaches the stream out of order, the other subjects go on, and a
// row the projector writes later follows them. `emitter requeue` brings
// them back in order, and they are published once the cause is fixed.
func TestRefusedForGoodIsDeadLettered(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setupWalletBalance(t)
	ctx := context.Background()
	own := contract.ProjectionStream("wallet_balance")
	b.setMaxMsgSize(t, own, 512)
	big := fmt.Sprintf(`{"note":%q}`, strings.Repeat("x", 1024))
	b.insertRow(t, "w1", 1, big)
	b.insertRow(t, "w1", 2, `{"balance":2}`)
	b.insertRow(t, "w2", 1, `{"balance":1}`)
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	reg := prometheus.NewRegistry()
	// An hour: only a refusal for good moves at once.
	e, err := emitter.New(emitter.Config{DeadLetterAfter: emitter.OptionalDuration(time.Hour)}, b.pool, nc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.RelayOnce(ctx); err != nil {
		t.Fatalf("round returned %v; want w1 dead-lettered and no stall left", err)
	}
	if err := relayRound(ctx, e); err != nil { // deletes w2's relayed row
		t.Fatal(err)
	}
	rows, reasons := b.deadRows(t)
	if !slices.Equal(rows, []string{"wallet/w1:1", "wallet/w1:2"}) {
		t.Fatalf("dead letter holds %v; want w1's two rows in order", rows)
	}
	if !strings.HasPrefix(reasons[0], "refused for good") || !strings.Contains(reasons[0], "maximum") {
		t.Errorf("reason %q; want a refusal for good naming the limit", reasons[0])
	}
	if n := b.outboxRows(t); n != 0 {
		t.Fatalf("%d rows left in the outbox; want 0", n)
	}
	if n := counter(t, reg, "jetproj_emitter_dead_lettered_total"); n != 2 {
		t.Fatalf("jetproj_emitter_dead_lettered_total %v; want 2", n)
	}
	if n := gauge(t, reg, "jetproj_emitter_stalled_subjects"); n != 0 {
		t.Fatalf("stalled subjects %v; want 0 once dead-lettered", n)
	}
	// A later event of the dead subject follows it; another subject's goes out.
	b.insertRow(t, "w1", 3, `{"balance":3}`)
	b.insertRow(t, "w2", 2, `{"balance":2}`)
	devtest.Eventually(t, 15*time.Second, func() error {
		if err := relayRound(ctx, e); err != nil {
			return err
		}
		if rows, _ := b.deadRows(t); len(rows) != 3 {
			return fmt.Errorf("dead letter holds %v; want w1's third row too", rows)
		}
		return nil
	})
	_, reasons = b.deadRows(t)
	if !strings.Contains(reasons[2], "follows") {
		t.Errorf("reason of the follower %q", reasons[2])
	}
	b.relayAll(t, e)
	var ids []string
	for _, d := range b.derived(t) {
		ids = append(ids, d.id)
	}
	if !slices.Equal(ids, []string{"wallet_balance:0:wallet/w2:1", "wallet_balance:0:wallet/w2:2"}) {
		t.Fatalf("stream holds %v; want w2's events alone", ids)
	}
	dead, err := emitter.DeadLettered(ctx, b.pool)
	if err != nil || len(dead) != 1 || dead[0].Subject != projector.EmitSubject("wallet_balance", "wallet/w1") || dead[0].Rows != 3 {
		t.Fatalf("DeadLettered: %+v, %v", dead, err)
	}
	// Fixed and requeued: in order, each once.
	b.setMaxMsgSize(t, own, -1)
	n, err := emitter.Requeue(ctx, b.pool, projector.EmitSubject("wallet_balance", "wallet/w1"))
	if err != nil || n != 3 {
		t.Fatalf("requeue: %d, %v; want 3 rows", n, err)
	}
	devtest.Eventually(t, 15*time.Second, func() error {
		if err := relayRound(ctx, e); err != nil {
			return err
		}
		if n := b.outboxRows(t); n != 0 {
			return fmt.Errorf("%d rows in the outbox", n)
		}
		return nil
	})
	var w1 []string
	for _, d := range b.derived(t) {
		if d.subject == projector.EmitSubject("wallet_balance", "wallet/w1") {
			w1 = append(w1, d.id)
		}
	}
	if want := []string{"wallet_balance:0:wallet/w1:1", "wallet_balance:0:wallet/w1:2", "wallet_balance:0:wallet/w1:3"}; !slices.Equal(w1, want) {
		t.Fatalf("w1 on the stream: %v; want %v", w1, want)
	}
	if rows, _ := b.deadRows(t); len(rows) != 0 {
		t.Fatalf("dead letter still holds %v", rows)
	}
}

// A subject refused for a reason that may pass (here an unexpected
// duplicate) stalls as before, and moves to the dead letter only once it
// has been refused for longer than EMITTER_DEAD_LETTER_AFTER.
func TestStalledTooLongIsDeadLettered(t *testing.T) {
	t.Parallel()
	b := setupWalletBalance(t)
	ctx := context.Background()
	squatter := nats.NewMsg(projector.EmitSubject("wallet_balance", "wallet/squatter"))
	squatter.Header.Set(nats.MsgIdHdr, "wallet_balance:0:wallet/w1:1")
	if _, err := b.js.PublishMsg(ctx, squatter); err != nil {
		t.Fatal(err)
	}
	b.insertRow(t, "w1", 1, `{}`)
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	e, err := emitter.New(emitter.Config{DeadLetterAfter: emitter.OptionalDuration(time.Second)}, b.pool, nc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var se *emitter.StalledError
	if _, err := e.RelayOnce(ctx); !errors.As(err, &se) || !errors.Is(err, derivedpkg.ErrUnexpectedDuplicate) {
		t.Fatalf("first round returned %v; want w1 stalled", err)
	}
	if rows, _ := b.deadRows(t); len(rows) != 0 {
		t.Fatalf("dead-lettered at the first refusal: %v", rows)
	}
	if st := e.Stalled(); len(st) != 1 || st[0].Subject != projector.EmitSubject("wallet_balance", "wallet/w1") {
		t.Fatalf("Stalled() = %+v", st)
	}
	devtest.Eventually(t, 20*time.Second, func() error {
		if err := relayRound(ctx, e); err != nil {
			return err
		}
		if rows, _ := b.deadRows(t); len(rows) != 1 {
			return errors.New("not dead-lettered yet")
		}
		return nil
	})
	if d := time.Since(start); d < time.Second {
		t.Fatalf("dead-lettered after %v; want after EMITTER_DEAD_LETTER_AFTER (1s)", d)
	}
	if _, reasons := b.deadRows(t); !strings.HasPrefix(reasons[0], "refused for ") || strings.HasPrefix(reasons[0], "refused for good") {
		t.Fatalf("reason %q", reasons[0])
	}
	if st := e.Stalled(); len(st) != 0 {
		t.Fatalf("Stalled() = %+v after dead-lettering", st)
	}
	var left int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("outbox holds %d rows (%v)", left, err)
	}
}
