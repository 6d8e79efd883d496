package feeder_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

func TestMain(m *testing.M) { devtest.Main(m) }

type bundle struct {
	dbURL string
	pool  *pgxpool.Pool
	nats  *devenv.NATS
	js    jetstream.JetStream
}

func setup(t *testing.T, natsOpts ...func(*devenv.NATSOptions)) *bundle {
	t.Helper()
	ctx := context.Background()
	b := &bundle{dbURL: devtest.Postgres(t), nats: devtest.NATS(t, natsOpts...)}
	var err error
	if b.pool, err = pgxpool.New(ctx, b.dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.pool.Close)
	if _, err := eventstore.Migrate(ctx, b.pool); err != nil {
		t.Fatal(err)
	}
	_, b.js = devtest.Connect(t, b.nats)
	return b
}

// running is a feeder started by start; kill stops it the hard way.
type running struct {
	f      *feeder.Feeder
	nc     *nats.Conn
	pool   *pgxpool.Pool
	cancel context.CancelFunc
	done   chan error
}

// start runs a feeder with its own NATS connection and pool.
func (b *bundle) start(t *testing.T, cfg feeder.Config) *running {
	t.Helper()
	return b.startWith(t, cfg, nil)
}

// startWith is start with the feeder's metrics registered in reg.
func (b *bundle) startWith(t *testing.T, cfg feeder.Config, reg prometheus.Registerer) *running {
	t.Helper()
	nc, err := nats.Connect(b.nats.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(context.Background(), b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	f, err := feeder.New(cfg, feeder.Deps{Pool: pool, NC: nc, Logger: testLogger(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{f: f, nc: nc, pool: pool, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- f.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop is the graceful stop; safe after kill.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("feeder returned %v", err)
		}
		r.done <- nil
	case <-time.After(20 * time.Second):
		t.Error("feeder did not stop within 20s")
	}
	r.nc.Close()
	r.pool.Close()
}

// kill drops the feeder's connections first, so it can neither finish its
// publishes nor release its lease, then stops the goroutine.
func (r *running) kill(t *testing.T) {
	t.Helper()
	r.nc.Close()
	r.pool.Reset()
	r.stop(t)
}

// streamMsgs reads every message of a stream in order.
func streamMsgs(t *testing.T, js jetstream.JetStream, stream string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for uint64(len(out)) < info.State.Msgs {
		batch, err := c.Fetch(int(min(info.State.Msgs-uint64(len(out)), 5000)), jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, m)
			n++
		}
		if batch.Error() != nil {
			t.Fatal(batch.Error())
		}
		if n == 0 {
			t.Fatalf("read %d of %d messages, then nothing", len(out), info.State.Msgs)
		}
	}
	return out
}

func streamCount(ctx context.Context, js jetstream.JetStream, stream string) (uint64, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// waitStream waits until the stream holds n messages.
func waitStream(t *testing.T, js jetstream.JetStream, stream string, n uint64, within time.Duration) {
	t.Helper()
	devtest.Eventually(t, within, func() error {
		got, err := streamCount(context.Background(), js, stream)
		if err != nil {
			return err
		}
		if got != n {
			return fmt.Errorf("stream %s holds %d messages, want %d", stream, got, n)
		}
		return nil
	})
}

// verifyExactlyOnce checks that the stream holds every committed event of
// the store exactly once, with each aggregate in version order.
func verifyExactlyOnce(t *testing.T, b *bundle, stream string) {
	t.Helper()
	ctx := context.Background()
	want := map[int64]string{}
	rows, err := b.pool.Query(ctx, `SELECT position, aggregate_type || '/' || aggregate_id FROM eventstore.events`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var p int64
		var agg string
		if err := rows.Scan(&p, &agg); err != nil {
			t.Fatal(err)
		}
		want[p] = agg
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	msgs := streamMsgs(t, b.js, stream)
	seenID := map[string]bool{}
	seenPos := map[int64]bool{}
	lastVersion := map[string]int64{}
	for _, m := range msgs {
		e, err := eventmsg.Parse(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			t.Fatal(err)
		}
		id := m.Headers().Get(nats.MsgIdHdr)
		if seenID[id] || seenPos[e.Position] {
			t.Fatalf("event %d (%s) appears twice", e.Position, id)
		}
		seenID[id], seenPos[e.Position] = true, true
		agg := e.AggregateType + "/" + e.AggregateID
		if want[e.Position] != agg {
			t.Fatalf("stream has event %d of %s, which the store does not have (rolled back?)", e.Position, agg)
		}
		if e.Version != lastVersion[agg]+1 {
			t.Fatalf("%s: version %d after %d", agg, e.Version, lastVersion[agg])
		}
		lastVersion[agg] = e.Version
	}
	if len(msgs) != len(want) {
		missing := 0
		for p := range want {
			if !seenPos[p] {
				missing++
			}
		}
		t.Fatalf("stream holds %d events, store %d (%d missing)", len(msgs), len(want), missing)
	}
}

func appendN(t *testing.T, pool *pgxpool.Pool, aggType string, aggregates, perAggregate int) {
	t.Helper()
	ctx := context.Background()
	for i := range aggregates {
		evs := make([]eventstore.NewEvent, perAggregate)
		for j := range evs {
			evs[j] = eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: map[string]int{"amount": j + 1}}
		}
		if _, err := eventstore.Append(ctx, pool, aggType, fmt.Sprintf("%s-%d", aggType, i), eventstore.ExpectAny, evs...); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFeedsEveryEventWithContractHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	_, err := eventstore.Append(ctx, b.pool, "wallet", "w.1 *>", eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"owner": "ann"},
			Metadata: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tenant": "acme"}})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b.pool, "wallet", 10, 5)
	b.start(t, feeder.Config{PollInterval: time.Hour})
	waitStream(t, b.js, contract.EventsStream, 51, 20*time.Second)
	verifyExactlyOnce(t, b, contract.EventsStream)

	m, err := b.js.Stream(ctx, contract.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	first, err := m.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if first.Subject != "events.wallet.w%2E1%20%2A%3E" {
		t.Errorf("subject = %q", first.Subject)
	}
	for h, want := range map[string]string{
		"Event-Type": "WalletOpened", "Aggregate-Version": "1", "Aggregate-Id": "w.1 *>",
		"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "Meta-tenant": "acme",
	} {
		if got := first.Header.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
	if _, err := time.Parse(time.RFC3339, first.Header.Get("Recorded-At")); err != nil {
		t.Errorf("Recorded-At: %v", err)
	}
	var p map[string]string
	if err := json.Unmarshal(first.Data, &p); err != nil || p["owner"] != "ann" {
		t.Errorf("body %s", first.Data)
	}

	// Woken by the notification: the poll interval is an hour.
	appendN(t, b.pool, "ticket", 1, 1)
	waitStream(t, b.js, contract.EventsStream, 52, 10*time.Second)
}

// TestGapSafeUnderFire is G1: concurrent writers with random delays inside
// their transactions, rollbacks, and a long transaction holding an early
// position; the feeder is killed without a graceful stop mid-stream and
// restarted. The stream must hold each committed event once, in order per
// aggregate, and no rolled-back event.
func TestGapSafeUnderFire(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	ctx := context.Background()
	cfg := feeder.Config{LeaseTTL: 2 * time.Second, BatchSize: 500}

	appendN(t, b.pool, "ticket", 100, 1)

	// The long transaction takes an early position and holds it.
	long, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Rollback(ctx) //nolint:errcheck
	if _, err := eventstore.AppendTx(ctx, long, "wallet", "long-one", eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"owner": "early"}}); err != nil {
		t.Fatal(err)
	}

	first := b.start(t, cfg)
	const writers, perWriter = 16, 700
	var (
		wg                sync.WaitGroup
		committed, rolled atomic.Int64
	)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			written := 0
			for written < perWriter {
				n := 1 + rng.IntN(10)
				tx, err := b.pool.Begin(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				agg := fmt.Sprintf("w%d-%d", w, rng.IntN(40))
				evs := make([]eventstore.NewEvent, n)
				for i := range evs {
					evs[i] = eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: map[string]int{"amount": i}}
				}
				if _, err := eventstore.AppendTx(ctx, tx, "wallet", agg, eventstore.ExpectAny, evs...); err != nil {
					t.Error(err)
					_ = tx.Rollback(ctx)
					return
				}
				// Mostly short transactions, a few up to 2 s.
				d := time.Duration(rng.IntN(3000)) * time.Microsecond
				if rng.IntN(100) < 2 {
					d = time.Duration(rng.IntN(2000)) * time.Millisecond
				}
				time.Sleep(d) // the writer's own work inside its transaction
				if rng.IntN(100) < 5 {
					_ = tx.Rollback(ctx)
					rolled.Add(int64(n))
					continue
				}
				if err := tx.Commit(ctx); err != nil {
					t.Error(err)
					return
				}
				committed.Add(int64(n))
				written += n
			}
		})
	}
	// While the long transaction is open, nothing after it is published.
	devtest.Eventually(t, 60*time.Second, func() error {
		if n := committed.Load(); n < 3000 {
			return fmt.Errorf("%d committed", n)
		}
		return nil
	})
	if n, err := streamCount(ctx, b.js, contract.EventsStream); err != nil || n > 100 {
		t.Fatalf("with the early transaction open the stream holds %d events (%v), want at most the 100 before it", n, err)
	}
	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// Kill the feeder mid-stream, once it has published a good part.
	devtest.Eventually(t, 60*time.Second, func() error {
		n, err := streamCount(ctx, b.js, contract.EventsStream)
		if err == nil && n < 2000 {
			err = fmt.Errorf("%d published", n)
		}
		return err
	})
	first.kill(t)
	second := b.start(t, cfg)
	wg.Wait()
	total := committed.Load() + 101
	if total < 10000 || rolled.Load() == 0 {
		t.Fatalf("committed %d, rolled back %d: the test did not exercise enough", total, rolled.Load())
	}
	waitStream(t, b.js, contract.EventsStream, uint64(total), 60*time.Second)
	second.stop(t)
	verifyExactlyOnce(t, b, contract.EventsStream)
	t.Logf("%d events committed, %d rolled back, feeder killed once", total, rolled.Load())
}

// TestResumesFromTheStreamNotTheWindow: with the checkpoint gone and a
// duplicate window far shorter than the outage, a restarted feeder resumes
// exactly after the stream's last message.
func TestResumesFromTheStreamNotTheWindow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	cfg := feeder.Config{DuplicateWindow: 100 * time.Millisecond, StreamMaxAge: time.Hour}
	appendN(t, b.pool, "wallet", 50, 4)
	r := b.start(t, cfg)
	waitStream(t, b.js, contract.EventsStream, 200, 20*time.Second)
	r.stop(t)

	kv, err := b.js.KeyValue(ctx, contract.FeederStateBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "checkpoint.events"); err != nil {
		t.Fatal(err)
	}
	appendN(t, b.pool, "ticket", 20, 2)
	r = b.start(t, cfg)
	waitStream(t, b.js, contract.EventsStream, 240, 20*time.Second)
	r.stop(t)
	verifyExactlyOnce(t, b, contract.EventsStream)
}

func TestNATSRestartMidStream(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	ctx := context.Background()
	appendN(t, b.pool, "wallet", 2000, 10)
	r := b.start(t, feeder.Config{LeaseTTL: 3 * time.Second})
	devtest.Eventually(t, 60*time.Second, func() error {
		n, err := streamCount(ctx, b.js, contract.EventsStream)
		if err == nil && n < 3000 {
			err = fmt.Errorf("%d published", n)
		}
		return err
	})
	began := time.Now()
	if err := b.nats.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("NATS restarted in %v", time.Since(began))
	appendN(t, b.pool, "ticket", 100, 1)
	waitStream(t, b.js, contract.EventsStream, 20100, 30*time.Second)
	r.stop(t)
	verifyExactlyOnce(t, b, contract.EventsStream)
}

// TestPostgresRestartMidStream is not parallel: it restarts the cluster that
// every test of this package shares.
func TestPostgresRestartMidStream(t *testing.T) {
	devtest.Slow(t)
	b := setup(t)
	ctx := context.Background()
	appendN(t, b.pool, "wallet", 2000, 10)
	r := b.start(t, feeder.Config{})
	devtest.Eventually(t, 60*time.Second, func() error {
		n, err := streamCount(ctx, b.js, contract.EventsStream)
		if err == nil && n < 2000 {
			err = fmt.Errorf("%d published", n)
		}
		return err
	})
	cluster := devtest.Cluster(t)
	if err := cluster.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		_, err := eventstore.Append(ctx, b.pool, "ticket", "after-restart", eventstore.ExpectAny, eventstore.NewEvent{Type: "TicketWasRegistered"})
		return err
	})
	waitStream(t, b.js, contract.EventsStream, 20001, 90*time.Second)
	r.stop(t)
	verifyExactlyOnce(t, b, contract.EventsStream)
}

func TestOversizedEventStopsTheFeeder(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *devenv.NATSOptions) { o.MaxPayload = 4096 })
	ctx := context.Background()
	appendN(t, b.pool, "wallet", 3, 1)
	big := map[string]string{"blob": strings.Repeat("x", 8000)}
	res, err := eventstore.Append(ctx, b.pool, "wallet", "big", eventstore.ExpectAny, eventstore.NewEvent{Type: "WalletOpened", Payload: big})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b.pool, "ticket", 2, 1)
	r := b.start(t, feeder.Config{})
	devtest.Eventually(t, 20*time.Second, func() error {
		if st := r.f.Status(); st.State != feeder.StateStalled {
			return fmt.Errorf("state %s", st.State)
		}
		return nil
	})
	st := r.f.Status()
	if st.Stalled == nil || st.Stalled.Position != res.LastPosition || !strings.Contains(st.Error, "max payload") {
		t.Fatalf("status does not name the event %d: %+v", res.LastPosition, st)
	}
	if n, _ := streamCount(ctx, b.js, contract.EventsStream); n != 3 {
		t.Fatalf("stream holds %d events, want the 3 before the oversized one", n)
	}
	rep, err := feeder.ReadReport(ctx, b.js, feeder.Config{})
	if err != nil || rep.Status == nil || rep.Status.Stalled == nil || rep.Status.Stalled.Position != res.LastPosition {
		t.Fatalf("saved status %+v, %v", rep.Status, err)
	}
}

func TestOversizedEventDeadLettered(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *devenv.NATSOptions) { o.MaxPayload = 4096 })
	ctx := context.Background()
	appendN(t, b.pool, "wallet", 3, 1)
	res, err := eventstore.Append(ctx, b.pool, "wallet", "big", eventstore.ExpectAny,
		eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"blob": strings.Repeat("x", 8000)}})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b.pool, "ticket", 2, 1)
	r := b.start(t, feeder.Config{OnOversized: feeder.OversizedDeadLetter})
	waitStream(t, b.js, contract.EventsStream, 5, 20*time.Second)
	r.stop(t)
	var pos int64
	var reason string
	if err := b.pool.QueryRow(ctx, `SELECT position, reason FROM eventstore.dead_letters WHERE feeder = 'events'`).Scan(&pos, &reason); err != nil {
		t.Fatal(err)
	}
	if pos != res.LastPosition || !strings.Contains(reason, "max payload") {
		t.Fatalf("dead letter %d %q", pos, reason)
	}
}

// TestFiltersAndSideBySideFeeders runs two feeders with different names,
// streams and filters over the same store.
func TestFiltersAndSideBySideFeeders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	add := func(aggType, typ string) {
		if _, err := eventstore.Append(ctx, b.pool, aggType, "x", eventstore.ExpectAny, eventstore.NewEvent{Type: typ}); err != nil {
			t.Fatal(err)
		}
	}
	add("ticket", "Ticket.Registered")
	add("ticket", "Ticket.Closed")
	add("order", "Order.Created")
	add("order", "Order.Cancelled")
	add("wallet", "WalletOpened")
	tickets := b.start(t, feeder.Config{Name: "tickets", Stream: "TICKETS", SubjectPrefix: "tickets",
		EventTypes: []string{"Ticket.*", "Order.Created"}})
	wallets := b.start(t, feeder.Config{Name: "wallets", Stream: "WALLETS", SubjectPrefix: "wallets",
		AggregateTypes: []string{"wallet"}})
	waitStream(t, b.js, "TICKETS", 3, 20*time.Second)
	waitStream(t, b.js, "WALLETS", 1, 20*time.Second)
	add("wallet", "MoneyWasAddedToWallet")
	add("ticket", "Ticket.Closed")
	waitStream(t, b.js, "WALLETS", 2, 20*time.Second)
	waitStream(t, b.js, "TICKETS", 4, 20*time.Second)
	tickets.stop(t)
	wallets.stop(t)
	var types []string
	for _, m := range streamMsgs(t, b.js, "TICKETS") {
		types = append(types, m.Headers().Get(contract.HeaderEventType))
		if !strings.HasPrefix(m.Subject(), "tickets.") {
			t.Errorf("subject %s", m.Subject())
		}
	}
	if got := strings.Join(types, ","); got != "Ticket.Registered,Ticket.Closed,Order.Created,Ticket.Closed" {
		t.Fatalf("TICKETS holds %s", got)
	}
}

// TestOneActiveInstance runs two instances of one feeder: only one publishes;
// when it dies the standby takes over; every event lands once.
func TestOneActiveInstance(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	cfg := feeder.Config{LeaseTTL: 2 * time.Second}
	a := b.start(t, withInstance(cfg, "a"))
	devtest.Eventually(t, 10*time.Second, func() error {
		if s := a.f.Status().State; s != feeder.StateCaughtUp {
			return fmt.Errorf("a is %s", s)
		}
		return nil
	})
	c := b.start(t, withInstance(cfg, "c"))
	appendN(t, b.pool, "wallet", 100, 3)
	waitStream(t, b.js, contract.EventsStream, 300, 20*time.Second)
	if s := c.f.Status().State; s != feeder.StateStandby {
		t.Fatalf("second instance is %s, want standby", s)
	}
	a.kill(t)
	appendN(t, b.pool, "ticket", 50, 2)
	waitStream(t, b.js, contract.EventsStream, 400, 30*time.Second)
	devtest.Eventually(t, 10*time.Second, func() error {
		if s := c.f.Status().State; s != feeder.StateCaughtUp {
			return fmt.Errorf("standby is %s after takeover, want caught-up", s)
		}
		return nil
	})
	c.stop(t)
	verifyExactlyOnce(t, b, contract.EventsStream)
	_ = ctx
}

// testLogger logs to stderr when JETPROJ_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("JETPROJ_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func withInstance(c feeder.Config, id string) feeder.Config { c.Instance = id; return c }

func TestStreamConfigDifferenceIsReported(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, _, err := feeder.EnsureStream(ctx, b.js, feeder.Config{}.Defaults()); err != nil {
		t.Fatal(err)
	}
	changed := feeder.Config{DuplicateWindow: time.Minute, MaxConsumers: 500}.Defaults()
	_, _, err := feeder.EnsureStream(ctx, b.js, changed)
	var diff *feeder.StreamConfigError
	if !errors.As(err, &diff) || len(diff.Differences) != 2 {
		t.Fatalf("got %v, want a StreamConfigError with 2 differences", err)
	}
	changed.UpdateStream = true
	_, res, err := feeder.EnsureStream(ctx, b.js, changed)
	if err != nil || len(res.Updated) != 2 {
		t.Fatalf("update: %+v, %v", res, err)
	}
	s, _ := b.js.Stream(ctx, contract.EventsStream)
	if got := s.CachedInfo().Config.Duplicates; got != time.Minute {
		t.Fatalf("duplicate window %v after update", got)
	}
}

func TestConfigListsEveryProblem(t *testing.T) {
	cfg := feeder.Config{Name: "Bad Name", Stream: "a.b", SubjectPrefix: "x.*", EventTypes: []string{"Ticket .*"},
		BatchSize: -1, PageBytes: 100, OnOversized: "drop", StreamReplicas: 2, LeaseBucket: "same", StateBucket: "same"}.Defaults()
	problems := cfg.Validate()
	for _, want := range []string{"FEEDER_NAME", "FEEDER_STREAM:", "FEEDER_SUBJECT_PREFIX", "FEEDER_EVENT_TYPES", "FEEDER_BATCH_SIZE",
		"FEEDER_PAGE_BYTES", "FEEDER_ON_OVERSIZED", "FEEDER_STREAM_REPLICAS", "FEEDER_STATE_BUCKET"} {
		found := false
		for _, p := range problems {
			found = found || strings.HasPrefix(p, want)
		}
		if !found {
			t.Errorf("no problem reported for %s in %q", want, problems)
		}
	}
	if _, err := feeder.New(cfg, feeder.Deps{}); err == nil || !strings.Contains(err.Error(), "FEEDER_ON_OVERSIZED") {
		t.Errorf("New: %v", err)
	}
	if p := (feeder.Config{}).Defaults().Validate(); len(p) != 0 {
		t.Errorf("defaults are invalid: %q", p)
	}
	_ = strconv.Itoa
}

// createStreamWithMaxMsgSize creates the feeder's stream as the feeder would,
// but with a max_msg_size (a setting the feeder leaves to the operator).
func createStreamWithMaxMsgSize(t *testing.T, b *bundle, maxMsgSize int32) {
	t.Helper()
	sc := feeder.Config{}.Defaults().StreamConfig()
	sc.MaxMsgSize = maxMsgSize
	if _, err := b.js.CreateStream(context.Background(), sc); err != nil {
		t.Fatal(err)
	}
}

// TestStreamMaxMsgSizeStopsTheFeeder: an event the stream refuses for its
// max_msg_size (the server's max payload would take it) stops the feeder
// at that event with a status that names it, whether later events were in
// flight behind it or not; nothing after it is published.
func TestStreamMaxMsgSizeStopsTheFeeder(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		after int // events appended after the refused one
	}{{"followed", 2}, {"last", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := context.Background()
			createStreamWithMaxMsgSize(t, b, 2048)
			appendN(t, b.pool, "wallet", 3, 1)
			res, err := eventstore.Append(ctx, b.pool, "wallet", "big", eventstore.ExpectAny,
				eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"blob": strings.Repeat("x", 4000)}})
			if err != nil {
				t.Fatal(err)
			}
			appendN(t, b.pool, "ticket", tc.after, 1)
			r := b.start(t, feeder.Config{})
			devtest.Eventually(t, 20*time.Second, func() error {
				if st := r.f.Status(); st.State != feeder.StateStalled {
					return fmt.Errorf("state %s (%s)", st.State, st.Error)
				}
				return nil
			})
			st := r.f.Status()
			if st.Stalled == nil || st.Stalled.Position != res.LastPosition || st.Stalled.MaxMsgSize != 2048 || st.Stalled.Size <= 4000 ||
				!strings.Contains(st.Error, "max_msg_size") {
				t.Fatalf("status does not name the event %d and the stream's limit: %+v", res.LastPosition, st)
			}
			if n, _ := streamCount(ctx, b.js, contract.EventsStream); n != 3 {
				t.Fatalf("stream holds %d events, want the 3 before the refused one", n)
			}
			r.stop(t)
			// A restarted feeder stops at the same event: nothing was skipped.
			r = b.start(t, feeder.Config{})
			devtest.Eventually(t, 20*time.Second, func() error {
				if st := r.f.Status(); st.State != feeder.StateStalled || st.Stalled == nil || st.Stalled.Position != res.LastPosition {
					return fmt.Errorf("after a restart: state %s (%s)", st.State, st.Error)
				}
				return nil
			})
			if n, _ := streamCount(ctx, b.js, contract.EventsStream); n != 3 {
				t.Fatalf("after a restart the stream holds %d events, want 3", n)
			}
		})
	}
}

// TestStreamMaxMsgSizeDeadLettered: with FEEDER_ON_OVERSIZED=dead-letter an
// event the stream refuses for its max_msg_size is recorded and skipped,
// once, and every other event is published once, in order, across a
// restart.
func TestStreamMaxMsgSizeDeadLettered(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	createStreamWithMaxMsgSize(t, b, 2048)
	big := eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"blob": strings.Repeat("x", 4000)}}
	appendN(t, b.pool, "wallet", 3, 1)
	first, err := eventstore.Append(ctx, b.pool, "wallet", "big-1", eventstore.ExpectAny, big)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b.pool, "ticket", 2, 1)
	cfg := feeder.Config{OnOversized: feeder.OversizedDeadLetter}
	r := b.start(t, cfg)
	waitStream(t, b.js, contract.EventsStream, 5, 20*time.Second)
	r.stop(t)
	second, err := eventstore.Append(ctx, b.pool, "wallet", "big-2", eventstore.ExpectAny, big)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, b.pool, "order", 4, 1)
	r = b.start(t, cfg)
	waitStream(t, b.js, contract.EventsStream, 9, 20*time.Second)
	devtest.Eventually(t, 20*time.Second, func() error {
		if st := r.f.Status(); st.State != feeder.StateCaughtUp {
			return fmt.Errorf("state %s (%s)", st.State, st.Error)
		}
		return nil
	})
	r.stop(t)

	rows, err := b.pool.Query(ctx, `SELECT position, reason FROM eventstore.dead_letters WHERE feeder = 'events' ORDER BY position`)
	if err != nil {
		t.Fatal(err)
	}
	var dead []int64
	for rows.Next() {
		var pos int64
		var reason string
		if err := rows.Scan(&pos, &reason); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(reason, "max_msg_size") {
			t.Errorf("dead letter %d: reason %q does not name the limit", pos, reason)
		}
		dead = append(dead, pos)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if fmt.Sprint(dead) != fmt.Sprint([]int64{first.LastPosition, second.LastPosition}) {
		t.Fatalf("dead letters %v, want %d and %d", dead, first.LastPosition, second.LastPosition)
	}
	// The stream holds every other event once, in store order.
	var want []int64
	prow, err := b.pool.Query(ctx, `SELECT position FROM eventstore.events WHERE NOT position = ANY($1) ORDER BY transaction_id, position`, dead)
	if err != nil {
		t.Fatal(err)
	}
	for prow.Next() {
		var p int64
		if err := prow.Scan(&p); err != nil {
			t.Fatal(err)
		}
		want = append(want, p)
	}
	var got []int64
	for _, m := range streamMsgs(t, b.js, contract.EventsStream) {
		p, _ := strconv.ParseInt(m.Headers().Get(contract.HeaderEventPosition), 10, 64)
		got = append(got, p)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("stream holds positions %v, want %v", got, want)
	}
}

// TestPagesCappedByBytes: events with large payloads are read in pages that
// stay within FEEDER_PAGE_BYTES (an event larger than it alone), observed
// on the page-size histogram, and published exactly once, in order.
func TestPagesCappedByBytes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const budget = 256 << 10 // a bucket bound of jetproj_feeder_page_bytes
	// 60 events of ~40 kB over 6 wallets (2.4 MB: 10 pages at least), one
	// of 400 kB (larger than the budget, smaller than max_payload) in the
	// middle, then small ones.
	for i := range 60 {
		if _, err := eventstore.Append(ctx, b.pool, "wallet", fmt.Sprint("w", i%6), eventstore.ExpectAny,
			eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: map[string]string{"memo": strings.Repeat("m", 40_000)}}); err != nil {
			t.Fatal(err)
		}
		if i == 30 {
			if _, err := eventstore.Append(ctx, b.pool, "wallet", "huge", eventstore.ExpectAny,
				eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"memo": strings.Repeat("h", 400_000)}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendN(t, b.pool, "ticket", 50, 2)
	reg := prometheus.NewRegistry()
	r := b.startWith(t, feeder.Config{PageBytes: budget}, reg)
	waitStream(t, b.js, contract.EventsStream, 161, 30*time.Second)
	r.stop(t)
	verifyExactlyOnce(t, b, contract.EventsStream)

	h := pageHistogram(t, reg)
	var within, total uint64
	for _, bk := range h.GetBucket() {
		if bk.GetUpperBound() == budget {
			within = bk.GetCumulativeCount()
		}
	}
	total = h.GetSampleCount()
	// Every page but the one holding the 400 kB event alone is within the
	// budget; 2.4 MB take at least 10 pages.
	if total-within != 1 || total < 11 {
		t.Fatalf("%d pages, %d of them within %d bytes: want all but the one with the large event (max %v bytes)",
			total, within, budget, h.GetSampleSum())
	}
}

func pageHistogram(t *testing.T, reg *prometheus.Registry) *dto.Histogram {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "jetproj_feeder_page_bytes" {
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	t.Fatal("no jetproj_feeder_page_bytes metric")
	return nil
}

// TestPositionAndLagWhenPositionsInterleave: a transaction that took its id
// first but drew its positions last is read before the younger one, so the
// read cursor ends below the store's head. Once every event is published the
// status shows the head's position and the lag is 0 — before and after a
// restart.
func TestPositionAndLagWhenPositionsInterleave(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	older, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer older.Rollback(ctx) //nolint:errcheck // no-op after commit
	// The older transaction takes its id now.
	if _, err := older.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	appendN(t, b.pool, "wallet", 1, 3) // younger: positions 1–3
	if _, err := eventstore.AppendTx(ctx, older, "wallet", "older", eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{}},
		eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: map[string]int{"amount": 1}}); err != nil {
		t.Fatal(err)
	}
	if err := older.Commit(ctx); err != nil { // positions 4–5, read first
		t.Fatal(err)
	}
	check := func(r *running) {
		t.Helper()
		devtest.Eventually(t, 20*time.Second, func() error {
			st := r.f.Status()
			if st.State != feeder.StateCaughtUp || st.Position != 5 {
				return fmt.Errorf("status %s at position %d (cursor %s), want caught-up at 5", st.State, st.Position, st.Cursor)
			}
			return nil
		})
		if c := r.f.Cursor(); c.Position != 3 {
			t.Fatalf("cursor %v: the test did not interleave positions", c)
		}
		n, err := eventstore.Behind(ctx, b.pool, r.f.Cursor())
		if err != nil || n != 0 {
			t.Fatalf("behind the cursor: %d, %v; want 0", n, err)
		}
		if n, err := eventstore.Behind(ctx, b.pool, eventstore.Cursor{}); err != nil || n != 5 {
			t.Fatalf("behind the start: %d, %v; want 5", n, err)
		}
	}
	r := b.start(t, feeder.Config{})
	waitStream(t, b.js, contract.EventsStream, 5, 20*time.Second)
	check(r)
	r.stop(t)
	check(b.start(t, feeder.Config{}))
	verifyExactlyOnce(t, b, contract.EventsStream)
}
