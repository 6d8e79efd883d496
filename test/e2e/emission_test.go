package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/demo"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
)

// emitterEnv is the environment of an emitter process.
func emitterEnv(dbURL, natsURL, instance string) map[string]string {
	return map[string]string{
		"DATABASE_URL":      dbURL,
		"NATS_URL":          natsURL,
		"EMITTER_INSTANCE":  instance,
		"EMITTER_LEASE_TTL": "2s",
		"LOG_FORMAT":        "json",
		"OPS_ADDR":          "127.0.0.1:0",
	}
}

// pipelineEnv is the environment of a projector process running the named
// projections (every example projection when none is named).
func pipelineEnv(dbURL, natsURL, replica string, projections ...string) map[string]string {
	env := projectorEnv(dbURL, natsURL, replica)
	if len(projections) == 0 {
		projections = examples.Names()
	}
	env["PROJECTIONS"] = strings.Join(projections, ",")
	return env
}

func startEmitter(t *testing.T, name string, env map[string]string) *proc {
	t.Helper()
	return startProc(t, name, bins.build(t).emitter, env, "run")
}

func startProjector(t *testing.T, name string, env map[string]string) *proc {
	t.Helper()
	return startProc(t, name, bins.build(t).projector, env, "run")
}

// projectorCmd runs a projector command to its end and fails the test when
// it does not succeed.
func projectorCmd(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	r := runBinary(t, bins.build(t).projector, env, args...)
	if r.code != 0 {
		t.Fatalf("projector %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, tail(r.stderr, 30))
	}
	return r
}

// derivedMsg is one message of a derived-event stream.
type derivedMsg struct {
	stream, subject, msgID, typ string
	gen                         int
	seq                         uint64
	data                        []byte
}

// readDerived reads every message of a stream; a missing stream reads as
// empty.
func readDerived(t *testing.T, js jetstream.JetStream, name string) []derivedMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return nil
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	var out []derivedMsg
	for uint64(len(out)) < info.State.Msgs {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			h := m.Headers()
			gen, _ := strconv.Atoi(h.Get(contract.HeaderGeneration))
			seq, _ := strconv.ParseUint(h.Get(contract.HeaderEmissionSeq), 10, 64)
			out = append(out, derivedMsg{stream: name, subject: m.Subject(), msgID: h.Get(jetstream.MsgIDHeader),
				typ: h.Get(contract.HeaderEventType), gen: gen, seq: seq, data: m.Data()})
		}
		if n == 0 && ctx.Err() != nil {
			t.Fatalf("stream %s: read %d of %d messages", name, len(out), info.State.Msgs)
		}
	}
	return out
}

// checkExactlyOnce checks a stream's derived events: every Nats-Msg-Id
// once, and per partition subject the emission sequence of each generation
// counting 1, 2, 3 … in stream order — nothing twice, nothing missing,
// nothing reordered. It returns the messages by subject.
func checkExactlyOnce(t *testing.T, msgs []derivedMsg) map[string][]derivedMsg {
	t.Helper()
	ids := map[string]bool{}
	bySubject := map[string][]derivedMsg{}
	errs := 0
	report := func(format string, args ...any) {
		if errs++; errs <= 10 {
			t.Errorf(format, args...)
		}
	}
	for _, m := range msgs {
		if m.msgID == "" || ids[m.msgID] {
			report("%s: Nats-Msg-Id %q missing or seen twice (subject %s)", m.stream, m.msgID, m.subject)
		}
		ids[m.msgID] = true
		prev := bySubject[m.subject]
		want := uint64(1)
		if n := len(prev); n > 0 && prev[n-1].gen == m.gen {
			want = prev[n-1].seq + 1
		}
		if m.seq != want {
			report("%s: %s: emission %d of generation %d follows %v: want %d", m.stream, m.subject, m.seq, m.gen, lastSeq(prev), want)
		}
		bySubject[m.subject] = append(prev, m)
	}
	return bySubject
}

func lastSeq(ms []derivedMsg) string {
	if len(ms) == 0 {
		return "nothing"
	}
	return fmt.Sprintf("%d/%d", ms[len(ms)-1].gen, ms[len(ms)-1].seq)
}

// outboxEmpty is nil once the emitter relayed every derived event.
func outboxEmpty(ctx context.Context, pool *pgxpool.Pool) error {
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%d derived events wait in the outbox", n)
	}
	return nil
}

// checkFinalBalances checks that the last WalletBalanceWasChanged of each
// wallet carries the wallet's final balance.
func checkFinalBalances(t *testing.T, pool *pgxpool.Pool, bySubject map[string][]derivedMsg) {
	t.Helper()
	rows, err := examplecheck.ReadWallets(context.Background(), pool)
	if err != nil {
		t.Fatal(err)
	}
	bad := 0
	for id, row := range rows {
		ms := bySubject["project.wallet_balance.wallet."+id]
		if len(ms) == 0 {
			bad++
			t.Errorf("wallet %s: no WalletBalanceWasChanged", id)
			continue
		}
		var last examples.WalletBalanceWasChanged
		if err := json.Unmarshal(ms[len(ms)-1].data, &last); err != nil || last.Balance != row.Balance || last.WalletID != id {
			if bad++; bad <= 10 {
				t.Errorf("wallet %s: last WalletBalanceWasChanged %s, balance %d", id, ms[len(ms)-1].data, row.Balance)
			}
		}
	}
	if len(bySubject) != len(rows) {
		t.Errorf("%d wallets emitted, %d in the read model", len(bySubject), len(rows))
	}
}

// writeEvents appends example-domain events with n writers until total
// events are written or ctx ends; it returns when they stopped.
func writeEvents(ctx context.Context, t *testing.T, pool *pgxpool.Pool, writers, total int) int {
	var written atomic.Int64
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			w := demo.NewWriter(pool, testSeed(t)+uint64(i), fmt.Sprintf("x%d-", i))
			for ctx.Err() == nil && written.Load() < int64(total) {
				n, err := w.Step(ctx)
				written.Add(int64(n))
				if err != nil && ctx.Err() == nil {
					t.Errorf("writer %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	return int(written.Load())
}

// TestPipelineSurvivesSIGKILL is G3 for the whole pipeline with real
// processes: feeder, projector and two emitters (one active by its lease)
// run the full example domain while tens of thousands of events are
// written, and the projector and the active emitter are SIGKILLed at
// random moments, several times. Afterwards every read model equals the
// reference fold, every derived event is on its stream exactly once and in
// partition order, and each wallet's last WalletBalanceWasChanged carries
// its final balance.
func TestPipelineSurvivesSIGKILL(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	startFeeder(t, "feeder", feederEnv(dbURL, ns.URL(), "f"))
	projectors := map[string]*proc{"p1": startProjector(t, "projector p1", pipelineEnv(dbURL, ns.URL(), "p1"))}
	emitters := map[string]*proc{
		"e1": startEmitter(t, "emitter e1", emitterEnv(dbURL, ns.URL(), "e1")),
		"e2": startEmitter(t, "emitter e2", emitterEnv(dbURL, ns.URL(), "e2")),
	}

	const total = 20000
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan int, 1)
	go func() { done <- writeEvents(ctx, t, pool, 3, total) }()

	rng := rand.New(rand.NewPCG(testSeed(t), 11))
	count := func() int {
		var n int
		_ = pool.QueryRow(context.Background(), `SELECT count(*) FROM eventstore.events`).Scan(&n)
		return n
	}
	for round := range 6 {
		target := (round + 1) * total / 7
		target += rng.IntN(total / 14)
		devtest.Eventually(t, 120*time.Second, func() error {
			if n := count(); n < target {
				return fmt.Errorf("%d events written, waiting for %d", n, target)
			}
			return nil
		})
		if round%2 == 0 || rng.IntN(2) == 0 {
			projectors["p1"].kill()
			projectors["p1"] = startProjector(t, "projector p1", pipelineEnv(dbURL, ns.URL(), "p1"))
		}
		if round%2 == 1 || rng.IntN(2) == 0 {
			victim := []string{"e1", "e2"}[rng.IntN(2)]
			emitters[victim].kill()
			emitters[victim] = startEmitter(t, "emitter "+victim, emitterEnv(dbURL, ns.URL(), victim))
		}
	}
	written := <-done
	t.Logf("%d events written", written)

	devtest.Eventually(t, 180*time.Second, func() error {
		ctx := context.Background()
		if err := examplecheck.Verify(ctx, pool, js); err != nil {
			return err
		}
		return outboxEmpty(ctx, pool)
	})
	wallets := checkExactlyOnce(t, readDerived(t, js, contract.ProjectionStream(examples.WalletBalanceName)))
	checkFinalBalances(t, pool, wallets)
	for _, name := range examples.Names() {
		if name != examples.WalletBalanceName {
			checkExactlyOnce(t, readDerived(t, js, contract.ProjectionStream(name)))
		}
	}
	// OrderFullyCompleted once per completed order on the own stream and on
	// completed_orders; WalletBecameHighValue as the fold of wallet_balance's
	// stream says.
	if err := examplecheck.VerifyDerived(context.Background(), pool, js); err != nil {
		t.Error(err)
	}
	if n := streamMsgCount(t, js, examples.CompletedOrdersStream); n == 0 {
		t.Errorf("no order completed in %d events", written)
	}
}

// walletDeposits appends n deposits of amount to one wallet, opening it
// first when it is new.
func walletDeposits(t *testing.T, pool *pgxpool.Pool, id string, n int, amount int64) {
	t.Helper()
	ctx := context.Background()
	evs := make([]eventstore.NewEvent, 0, n+1)
	var version int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM eventstore.events WHERE aggregate_type = 'wallet' AND aggregate_id = $1`, id).Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version == 0 {
		evs = append(evs, eventstore.NewEvent{Type: "WalletOpened", Payload: examples.WalletOpened{Owner: "e2e"}})
	}
	for range n {
		evs = append(evs, eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: examples.MoneyWasAddedToWallet{Amount: amount}})
	}
	if _, err := eventstore.Append(ctx, pool, "wallet", id, version, evs...); err != nil {
		t.Fatal(err)
	}
}

// counter counts the messages a core subscription receives, the way a
// subscriber service would see them.
type counter struct {
	mu       sync.Mutex
	subjects []string
}

func subscribeCount(t *testing.T, natsURL, subject string) *counter {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c := &counter{}
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		c.mu.Lock()
		c.subjects = append(c.subjects, m.Subject)
		c.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *counter) seen() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.subjects)
}

func streamMsgCount(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestEmissionLifecycle is G5 and G6 with real processes: a rebuild of
// wallet_balance while a subscriber listens emits nothing and stores
// nothing in the outbox; with live off the projection keeps its read model
// up to date but emits nothing, and once live again it emits for new events
// only; delete removes the projection's own stream and read model while
// linked streams stay.
func TestEmissionLifecycle(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	ctx := context.Background()
	startFeeder(t, "feeder", feederEnv(dbURL, ns.URL(), "f"))
	env := pipelineEnv(dbURL, ns.URL(), "p1")
	startProjector(t, "projector p1", env)
	startEmitter(t, "emitter", emitterEnv(dbURL, ns.URL(), "e1"))
	own := contract.ProjectionStream(examples.WalletBalanceName)

	for i := range 40 {
		walletDeposits(t, pool, fmt.Sprintf("w-%d", i), 5, 100)
	}
	settle := func() {
		t.Helper()
		devtest.Eventually(t, 60*time.Second, func() error {
			if err := examplecheck.Verify(ctx, pool, js, examples.WalletBalanceName); err != nil {
				return err
			}
			return outboxEmpty(ctx, pool)
		})
	}
	settle()
	before := streamMsgCount(t, js, own)
	if before < 40 {
		t.Fatalf("%d derived events for 40 wallets", before)
	}
	sub := subscribeCount(t, ns.URL(), contract.ProjectionSubjects(examples.WalletBalanceName))

	// Rebuild: the read model is rebuilt, nothing is emitted or stored in
	// the outbox meanwhile.
	watching, stopWatching := context.WithCancel(ctx)
	outboxSeen := make(chan int, 1)
	go func() {
		most := 0
		for watching.Err() == nil {
			var n int
			if pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox WHERE projection = $1`, examples.WalletBalanceName).Scan(&n) == nil {
				most = max(most, n)
			}
			select {
			case <-watching.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
		outboxSeen <- most
	}()
	projectorCmd(t, env, "rebuild", examples.WalletBalanceName)
	projectorCmd(t, env, "backfill", examples.WalletBalanceName)
	settle()
	stopWatching()
	if n := <-outboxSeen; n > 0 {
		t.Errorf("the rebuild stored %d derived events in the outbox", n)
	}
	if got := sub.seen(); len(got) > 0 {
		t.Errorf("the rebuild emitted %d derived events, e.g. %s", len(got), got[0])
	}
	if after := streamMsgCount(t, js, own); after != before {
		t.Errorf("%s holds %d messages after the rebuild, %d before", own, after, before)
	}

	// Live off: the read model follows, nothing is emitted.
	projectorCmd(t, env, "live", examples.WalletBalanceName, "off")
	walletDeposits(t, pool, "w-1", 3, 1000)
	walletDeposits(t, pool, "w-off", 2, 1000)
	settle()
	if got := sub.seen(); len(got) > 0 {
		t.Errorf("with live off %d derived events were emitted, e.g. %s", len(got), got[0])
	}

	// Live on: new events only.
	projectorCmd(t, env, "live", examples.WalletBalanceName, "on")
	walletDeposits(t, pool, "w-2", 2, 5000)
	walletDeposits(t, pool, "w-new", 1, 5000)
	settle()
	devtest.Eventually(t, 30*time.Second, func() error {
		got := sub.seen()
		if !slices.Contains(got, "project.wallet_balance.wallet.w-2") || !slices.Contains(got, "project.wallet_balance.wallet.w-new") {
			return fmt.Errorf("derived events since live on: %v", got)
		}
		return nil
	})
	for _, s := range sub.seen() {
		if s != "project.wallet_balance.wallet.w-2" && s != "project.wallet_balance.wallet.w-new" {
			t.Errorf("after live on, a derived event for an event handled while off: %s", s)
		}
	}
	bySubject := checkExactlyOnce(t, readDerived(t, js, own))
	for _, id := range []string{"w-2", "w-new"} {
		ms := bySubject["project.wallet_balance.wallet."+id]
		rows, err := examplecheck.ReadWallets(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		var last examples.WalletBalanceWasChanged
		if len(ms) == 0 || json.Unmarshal(ms[len(ms)-1].data, &last) != nil || last.Balance != rows[id].Balance {
			t.Errorf("wallet %s: last derived event does not carry balance %d", id, rows[id].Balance)
		}
	}

	// Delete: the own stream and the read model go; a linked stream stays.
	// An order completes, so that order_fulfilment links to completed_orders.
	if err := examples.AppendOrderFlow(ctx, pool, examples.Order{ID: "o-1", Customer: "acme", Total: 4200, Carrier: "dhl"}, examples.OrderSteps...); err != nil {
		t.Fatal(err)
	}
	linked := examples.CompletedOrdersStream
	devtest.Eventually(t, 30*time.Second, func() error {
		s, err := js.Stream(ctx, linked)
		if err != nil {
			return err
		}
		if info, err := s.Info(ctx); err != nil || info.State.Msgs != 1 {
			return fmt.Errorf("%s: %v messages (%v)", linked, info, err)
		}
		return nil
	})
	projectorCmd(t, env, "delete", examples.WalletBalanceName, "--yes")
	projectorCmd(t, env, "delete", examples.OrderFulfilmentName, "--yes")
	for _, name := range []string{examples.WalletBalanceName, examples.OrderFulfilmentName} {
		if _, err := js.Stream(ctx, contract.ProjectionStream(name)); err == nil {
			t.Errorf("stream %s still exists after delete", contract.ProjectionStream(name))
		}
	}
	if n := streamMsgCount(t, js, linked); n != 1 {
		t.Errorf("linked stream %s holds %d messages after delete, want 1", linked, n)
	}
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('wallet_balance') IS NOT NULL`).Scan(&exists); err != nil || exists {
		t.Errorf("table wallet_balance exists (%v) after delete (%v)", exists, err)
	}
}

// TestPipelineStageFailsAndResumes: high_value_wallets streams from
// wallet_balance's derived events. Its process dies; wallet_balance keeps
// projecting and emitting; once restarted, high_value_wallets resumes
// from its own positions in PROJECT_WALLET_BALANCE, and its read model and
// WalletBecameHighValue events equal the fold of that stream.
func TestPipelineStageFailsAndResumes(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	ctx := context.Background()
	startFeeder(t, "feeder", feederEnv(dbURL, ns.URL(), "f"))
	startProjector(t, "projector wallet", pipelineEnv(dbURL, ns.URL(), "pw", examples.WalletBalanceName))
	stageEnv := pipelineEnv(dbURL, ns.URL(), "ph", examples.HighValueWalletsName)
	stage := startProjector(t, "projector stage", stageEnv)
	startEmitter(t, "emitter", emitterEnv(dbURL, ns.URL(), "e1"))

	both := []string{examples.WalletBalanceName, examples.HighValueWalletsName}
	settled := func(names ...string) func() error {
		return func() error {
			if err := examplecheck.Verify(ctx, pool, js, names...); err != nil {
				return err
			}
			if err := outboxEmpty(ctx, pool); err != nil {
				return err
			}
			if slices.Contains(names, examples.HighValueWalletsName) {
				return examplecheck.VerifyDerived(ctx, pool, js, examples.HighValueWalletsName)
			}
			return nil
		}
	}
	for i := range 20 {
		walletDeposits(t, pool, fmt.Sprintf("w-%d", i), 3, 20000*int64(i%4+1))
	}
	devtest.Eventually(t, 60*time.Second, settled(both...))
	highBefore := streamMsgCount(t, js, contract.ProjectionStream(examples.HighValueWalletsName))
	if highBefore == 0 {
		t.Fatal("no wallet became high value")
	}

	// The stage dies; wallet_balance goes on, deriving what the stage will
	// need.
	stage.kill()
	changes := streamMsgCount(t, js, contract.ProjectionStream(examples.WalletBalanceName))
	for i := range 20 {
		walletDeposits(t, pool, fmt.Sprintf("w-%d", i), 2, 30000)
	}
	devtest.Eventually(t, 60*time.Second, settled(examples.WalletBalanceName))
	if after := streamMsgCount(t, js, contract.ProjectionStream(examples.WalletBalanceName)); after <= changes {
		t.Fatalf("wallet_balance emitted nothing while the stage was down (%d → %d)", changes, after)
	}
	if n := streamMsgCount(t, js, contract.ProjectionStream(examples.HighValueWalletsName)); n != highBefore {
		t.Fatalf("high_value_wallets emitted while its process was dead (%d → %d)", highBefore, n)
	}

	// Back: it resumes where it stopped, nothing missed, nothing twice.
	startProjector(t, "projector stage", stageEnv)
	devtest.Eventually(t, 60*time.Second, settled(both...))
	if n := streamMsgCount(t, js, contract.ProjectionStream(examples.HighValueWalletsName)); n <= highBefore {
		t.Errorf("no wallet became high value after the restart (%d → %d)", highBefore, n)
	}
	checkExactlyOnce(t, readDerived(t, js, contract.ProjectionStream(examples.HighValueWalletsName)))
}
