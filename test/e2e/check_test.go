package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/subject"
)

// openStore opens a pool on the database and migrates the event store, as
// an application would before appending.
func openStore(t *testing.T, dbURL string) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 12
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

// writers append wallet events (the example domain) from several goroutines,
// each owning its wallets and appending at the version it expects.
type writers struct {
	committed atomic.Int64 // events committed
	stop      chan struct{}
	wg        sync.WaitGroup
	stopOnce  sync.Once
}

// startWriters starts n writers. Each appends a transaction of 1–5 events
// every interval, so that the load is spread over the whole test rather than
// written in one burst. They run until stopped.
func startWriters(t *testing.T, pool *pgxpool.Pool, n int, interval time.Duration, seed uint64) *writers {
	t.Helper()
	w := &writers{stop: make(chan struct{})}
	for i := range n {
		w.wg.Go(func() {
			if err := w.write(pool, i, interval, rand.New(rand.NewPCG(seed, uint64(i)))); err != nil {
				t.Errorf("writer %d: %v", i, err)
			}
		})
	}
	t.Cleanup(w.halt)
	return w
}

func (w *writers) write(pool *pgxpool.Pool, id int, interval time.Duration, rng *rand.Rand) error {
	ctx := context.Background()
	const wallets = 50
	versions := make([]int64, wallets)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-w.stop:
			return nil
		case <-tick.C:
		}
		k := rng.IntN(wallets)
		var evs []eventstore.NewEvent
		if versions[k] == 0 {
			evs = append(evs, eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"owner": fmt.Sprintf("owner-%d-%d", id, k)}})
		}
		for len(evs) < 1+rng.IntN(5) {
			typ := "MoneyWasAddedToWallet"
			if rng.IntN(3) == 0 {
				typ = "MoneyWasWithdrawnFromWallet"
			}
			evs = append(evs, eventstore.NewEvent{Type: typ, Payload: map[string]int{"amount": 1 + rng.IntN(10000)}})
		}
		res, err := eventstore.Append(ctx, pool, "wallet", fmt.Sprintf("w%d-%d", id, k), versions[k], evs...)
		if err != nil {
			return err
		}
		versions[k] = res.Version
		w.committed.Add(int64(len(evs)))
	}
}

// halt stops the writers and waits for them. Safe to call twice.
func (w *writers) halt() {
	w.stopOnce.Do(func() { close(w.stop) })
	w.wg.Wait()
}

// storedEvent is what the store says about one event.
type storedEvent struct {
	aggregate string // type/id
	version   int64
	typ       string
}

// storeEvents reads every committed event of the store, by position.
func storeEvents(t *testing.T, pool *pgxpool.Pool) map[int64]storedEvent {
	t.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT position, aggregate_type, aggregate_id, version, event_type FROM eventstore.events`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]storedEvent{}
	for rows.Next() {
		var (
			pos         int64
			aggT, aggID string
			e           storedEvent
		)
		if err := rows.Scan(&pos, &aggT, &aggID, &e.version, &e.typ); err != nil {
			t.Fatal(err)
		}
		e.aggregate = aggT + "/" + aggID
		out[pos] = e
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// lastPosition is the store's highest position (0 when empty).
func lastPosition(t *testing.T, pool *pgxpool.Pool) int64 {
	t.Helper()
	var p int64
	if err := pool.QueryRow(context.Background(), `SELECT coalesce(max(position), 0) FROM eventstore.events`).Scan(&p); err != nil {
		t.Fatal(err)
	}
	return p
}

// streamCount is the number of messages in stream EVENTS.
func streamCount(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, contract.EventsStream)
	if err != nil {
		return 0, err
	}
	return s.CachedInfo().State.Msgs, nil
}

// waitStreamAtLeast waits until stream EVENTS holds at least n messages. It
// only reports whether that happened: the caller then verifies the stream,
// which says precisely what is missing or duplicated.
func waitStreamAtLeast(t *testing.T, js jetstream.JetStream, n uint64, within time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(within)
	backoff := time.Millisecond
	for {
		got, err := streamCount(context.Background(), js)
		if err == nil && got >= n {
			return true
		}
		if time.Now().After(deadline) {
			t.Errorf("stream EVENTS holds %d messages (%v) %v after asking, want %d", got, err, within, n)
			return false
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

// streamMsgs reads every message of stream EVENTS in order.
func streamMsgs(t *testing.T, js jetstream.JetStream) []*nats.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, contract.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	total := s.CachedInfo().State.Msgs
	if total == 0 {
		return nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]*nats.Msg, 0, total)
	for uint64(len(out)) < total {
		batch, err := c.Fetch(int(min(total-uint64(len(out)), 5000)), jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
			n++
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("read %d of %d messages of EVENTS, then nothing", len(out), total)
		}
	}
	return out
}

// verifyExactlyOnce checks that stream EVENTS holds every committed event
// of the store exactly once: unique Nats-Msg-Id and Event-Position, the set
// of positions equal to the store's, each message matching its row, and each
// aggregate's versions in order (1, 2, 3 … in stream order).
func verifyExactlyOnce(t *testing.T, pool *pgxpool.Pool, js jetstream.JetStream) {
	t.Helper()
	want := storeEvents(t, pool)
	msgs := streamMsgs(t, js)
	var problems []string
	report := func(format string, args ...any) {
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	seenID := map[string]int{}
	seenPos := map[int64]int{}
	lastVersion := map[string]int64{}
	for i, m := range msgs {
		seq := i + 1
		e, err := eventmsg.Parse(m)
		if err != nil {
			report("message %d: %v", seq, err)
			continue
		}
		id := m.Header.Get(nats.MsgIdHdr)
		if prev, ok := seenID[id]; ok {
			report("Nats-Msg-Id %q at stream sequences %d and %d", id, prev, seq)
		}
		if prev, ok := seenPos[e.Position]; ok {
			report("Event-Position %d at stream sequences %d and %d", e.Position, prev, seq)
		}
		seenID[id], seenPos[e.Position] = seq, seq
		if id != contract.EventMsgID(e.Position) {
			report("message %d: Nats-Msg-Id %q, want %q", seq, id, contract.EventMsgID(e.Position))
		}
		row, ok := want[e.Position]
		agg := e.AggregateType + "/" + e.AggregateID
		switch {
		case !ok:
			report("message %d: event %d of %s is not in the store", seq, e.Position, agg)
			continue
		case row.aggregate != agg || row.version != e.Version || row.typ != e.Type:
			report("message %d: event %d is %s v%d %s, the store says %s v%d %s",
				seq, e.Position, agg, e.Version, e.Type, row.aggregate, row.version, row.typ)
		}
		if wantSubj := subject.Event(e.AggregateType, e.AggregateID); m.Subject != wantSubj {
			report("message %d: subject %q, want %q", seq, m.Subject, wantSubj)
		}
		if e.Version != lastVersion[agg]+1 {
			report("%s: version %d follows %d (stream sequence %d)", agg, e.Version, lastVersion[agg], seq)
		}
		lastVersion[agg] = e.Version
	}
	var missing []int64
	for p := range want {
		if _, ok := seenPos[p]; !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		sort.Slice(missing, func(i, j int) bool { return missing[i] < missing[j] })
		report("%d committed events are not in the stream, first ones: %v", len(missing), missing[:min(len(missing), 20)])
	}
	if len(problems) > 0 {
		t.Fatalf("stream EVENTS (%d messages) against the store (%d events):\n  %s",
			len(msgs), len(want), strings.Join(problems, "\n  "))
	}
	t.Logf("stream EVENTS holds each of the %d committed events exactly once, in version order per aggregate", len(want))
}

// appendWallets opens wallets prefix-0 … prefix-(n-1), each with a
// WalletOpened and perWallet-1 MoneyWasAddedToWallet events, and returns the
// number of events appended.
func appendWallets(t *testing.T, pool *pgxpool.Pool, prefix string, n, perWallet int) int {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		evs := []eventstore.NewEvent{{Type: "WalletOpened", Payload: map[string]string{"owner": id}}}
		for j := 1; j < perWallet; j++ {
			evs = append(evs, eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: map[string]int{"amount": 100 * j}})
		}
		if _, err := eventstore.Append(ctx, pool, "wallet", id, eventstore.ExpectNoStream, evs...); err != nil {
			t.Fatal(err)
		}
	}
	return n * perWallet
}
