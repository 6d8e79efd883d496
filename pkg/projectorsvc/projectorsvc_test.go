package projectorsvc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// result is one Main call's outcome.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

func call(ctx context.Context, env map[string]string, defs projectorsvc.Definitions, args ...string) result {
	var out, errs bytes.Buffer
	code := projectorsvc.Main(ctx, args, env, &out, &errs, defs)
	return result{code, out.String(), errs.String()}
}

func TestBadConfigurationListsEveryProblem(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"DATABASE_URL":             "postgres://localhost/x",
		"NATS_URL":                 "nats://localhost:4222",
		"PROJECTIONS":              "wallet_balance, nope ,ticket_counts,wallet_balanse",
		"PROJECTOR_LEASE_TTL":      "soon",
		"PROJECTOR_STORE_REPLICAS": "2",
		"PROJECTOR_REPLCA":         "r1",
		"PROJECTOR_MAX_ATTEMPTS":   "-1",
		"PROJECTOR_REPLICA":        "r1\x1b[2J m.x",
		"DATABASE_MAX_CONNS":       "100000",
		"PROJECTOR_BACKOFF_MIN":    "2s",
		"PROJECTOR_BACKOFF_MAX":    "1s",
	}
	r := call(context.Background(), env, examples.All, "run")
	if r.code != 2 {
		t.Fatalf("want exit 2: %v", r)
	}
	for _, want := range []string{
		`PROJECTOR_LEASE_TTL: cannot parse "soon"`,
		`PROJECTOR_STORE_REPLICAS: 2, want 1, 3 or 5`,
		`PROJECTOR_REPLCA: unknown variable (did you mean PROJECTOR_REPLICA?)`,
		`PROJECTIONS: no projection "nope" (known: ` + strings.Join(examples.Names(), ", ") + `)`,
		`PROJECTIONS: no projection "wallet_balanse"`,
		`PROJECTOR_MAX_ATTEMPTS: -1, want 1 to 1000`,
		`PROJECTOR_REPLICA: "r1\x1b[2J m.x", want up to 64 characters`,
		`DATABASE_MAX_CONNS: 100000, want at most 1000`,
		`PROJECTOR_BACKOFF_MAX: 1s is below PROJECTOR_BACKOFF_MIN 2s`,
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(r)
	}

	// Each value on its own is fine.
	env = map[string]string{"DATABASE_URL": "postgres://localhost/x", "PROJECTIONS": " ticket_counts,", "PROJECTOR_LEASE_TTL": "500ms"}
	if r := call(context.Background(), env, examples.All, "run"); r.code != 2 || !strings.Contains(r.stderr, "PROJECTOR_LEASE_TTL: 500ms, want at least 1s") {
		t.Errorf("short TTL: %v", r)
	}
	// Zero attempts would park a partition before its first try; set and
	// empty are not the same.
	for v, want := range map[string]string{
		"0":     "PROJECTOR_MAX_ATTEMPTS: 0, want 1 to 1000",
		"1001":  "PROJECTOR_MAX_ATTEMPTS: 1001, want 1 to 1000",
		"three": `PROJECTOR_MAX_ATTEMPTS: cannot parse "three" as an integer`,
	} {
		_, err := projectorsvc.LoadConfig(map[string]string{"DATABASE_URL": "postgres://localhost/x", "PROJECTOR_MAX_ATTEMPTS": v}, examples.Names())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("PROJECTOR_MAX_ATTEMPTS=%s: %v, want %q", v, err, want)
		}
	}
	if cfg, err := projectorsvc.LoadConfig(map[string]string{"DATABASE_URL": "postgres://localhost/x", "PROJECTOR_REPLICA": "projector-7f9c.node-1"}, examples.Names()); err != nil || cfg.Projector.MaxAttempts != nil {
		t.Errorf("a host-like replica name and no PROJECTOR_MAX_ATTEMPTS: %v, max attempts %v", err, cfg.Projector.MaxAttempts)
	}
	cfg, err := projectorsvc.LoadConfig(map[string]string{"DATABASE_URL": "postgres://localhost/x", "PROJECTIONS": " ticket_counts,,ticket_counts",
		"PROJECTOR_MAX_ATTEMPTS": "3", "PROJECTOR_BACKOFF_MIN": "50ms"}, examples.Names())
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Projector.Selected(); len(got) != 1 || got[0] != "ticket_counts" || cfg.Projector.LeaseTTL != 6*time.Second || cfg.Projector.StoreReplicas != 1 ||
		cfg.Projector.MaxAttempts == nil || *cfg.Projector.MaxAttempts != 3 || cfg.Projector.BackoffMin != 50*time.Millisecond || cfg.Projector.BackoffMax != 0 {
		t.Errorf("config %+v, selected %q", cfg.Projector, got)
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://localhost/x", "NATS_URL": "nats://localhost:4222"}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"help"}, 0, "Usage: projector"},
		{[]string{"status", "--help"}, 0, "Usage: projector"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"status", "--jsn"}, 2, "status: unknown flag --jsn"},
		{[]string{"reset"}, 2, "reset needs a projection name"},
		{[]string{"retry", "wallet_balance"}, 2, "retry needs a projection name and a partition"},
		{[]string{"init", "a", "b"}, 2, `init: unexpected arguments ["b"]`},
		{[]string{"rebuild", "wallet_balance", "--partition"}, 2, "flag --partition needs a value"},
		{[]string{"reset", "nope"}, 2, `reset: no projection "nope" (known: wallet_balance,`},
		{[]string{"status", "wallet_balance", "nope"}, 2, `status: no projection "nope"`},
		{[]string{"delete", "ticket_counts"}, 2, "run it again with --yes"},
		{[]string{"live", "wallet_balance"}, 2, "live needs a projection name and on or off"},
		{[]string{"live", "wallet_balance", "maybe"}, 2, "live needs a projection name and on or off"},
		{[]string{"start"}, 2, "start needs a projection name"},
		{[]string{"skip", "wallet_balance"}, 2, "skip needs a projection name and a partition"},
		{[]string{"wait", "wallet_balance"}, 2, "wait needs --position N"},
		{[]string{"wait", "--position", "3"}, 2, "wait needs a projection name"},
		{[]string{"run", "x"}, 2, `run: unexpected arguments ["x"]`},
		{[]string{"help", "--json"}, 0, "Usage: projector"},
		{[]string{"healthcheck", "x"}, 2, `healthcheck: unexpected arguments ["x"]`},
		{[]string{"healthcheck", "-h"}, 0, "Usage: projector"},
	} {
		r := call(context.Background(), env, examples.All, tc.args...)
		out := r.stdout + r.stderr
		if r.code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%q: want exit %d and %q; %v", tc.args, tc.code, tc.want, r)
		}
	}
	// Admin commands need the replicas' server.
	env = map[string]string{"DATABASE_URL": "postgres://localhost/x"}
	if r := call(context.Background(), env, examples.All, "status"); r.code != 2 || !strings.Contains(r.stderr, "status needs NATS_URL") {
		t.Errorf("status without NATS_URL: %v", r)
	}
}

// bundle is a database with the event store, a NATS server with the feeder
// running, and the service's environment pointing at both.
type bundle struct {
	pool *pgxpool.Pool
	env  map[string]string
	ver  map[string]int64
	defs projectorsvc.Definitions
}

func setup(t *testing.T) *bundle {
	t.Helper()
	ctx := context.Background()
	dbURL := devtest.Postgres(t)
	n := devtest.NATS(t)
	b := &bundle{ver: map[string]int64{}, defs: examples.All, env: map[string]string{
		"DATABASE_URL": dbURL, "NATS_URL": n.URL(), "PROJECTOR_LEASE_TTL": "2s", "PROJECTOR_REPLICA": "r1", "LOG_LEVEL": "warn", "OPS_ADDR": "127.0.0.1:0",
	}}
	var err error
	if b.pool, err = pgxpool.New(ctx, dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.pool.Close)
	if _, err := eventstore.Migrate(ctx, b.pool); err != nil {
		t.Fatal(err)
	}
	nc, _ := devtest.Connect(t, n)
	f, err := feeder.New(feeder.Config{}, feeder.Deps{Pool: b.pool, NC: nc})
	if err != nil {
		t.Fatal(err)
	}
	b.background(t, "feeder", f.Run)
	return b
}

func (b *bundle) background(t *testing.T, name string, run func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("%s did not stop within 20s", name)
		}
	})
}

// runProjector runs `projector run` until the test ends.
func (b *bundle) runProjector(t *testing.T, defs projectorsvc.Definitions) {
	b.background(t, "projector run", func(ctx context.Context) error {
		if r := call(ctx, b.env, defs, "run"); r.code != 0 {
			return fmt.Errorf("%v", r)
		}
		return nil
	})
}

func (b *bundle) append(t *testing.T, wallet, typ string, payload any) {
	t.Helper()
	res, err := eventstore.Append(context.Background(), b.pool, "wallet", wallet, b.ver[wallet], eventstore.NewEvent{Type: typ, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	b.ver[wallet] = res.Version
}

func (b *bundle) wallets(t *testing.T, n int, amounts ...int64) {
	t.Helper()
	for i := range n {
		id := fmt.Sprintf("w-%d", i)
		if b.ver[id] == 0 {
			b.append(t, id, "WalletOpened", map[string]string{"owner": "o" + id})
		}
		for _, a := range amounts {
			b.append(t, id, "MoneyWasAddedToWallet", map[string]int64{"amount": a})
		}
	}
}

func (b *bundle) status(t *testing.T) map[string]projector.Status {
	t.Helper()
	r := call(context.Background(), b.env, b.defs, "status", "--json")
	if r.code != 0 {
		t.Fatalf("status: %v", r)
	}
	var all []projector.Status
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	out := map[string]projector.Status{}
	for _, s := range all {
		out[s.Name] = s
	}
	return out
}

// audit counts the events of each wallet; an amount of 13 is poison until
// fixed is set.
type audit struct{ Events int }

func auditProjection(fixed *atomic.Bool) *projection.Projection[audit] {
	p := projection.New[audit]("wallet_audit", projection.FromAggregates("wallet"),
		projection.Retries(2, 10*time.Millisecond, 20*time.Millisecond))
	projection.OnType(p, "MoneyWasAddedToWallet", func(_ context.Context, c *projection.Context[audit], e projection.Event[examples.MoneyWasAddedToWallet]) error {
		if e.Data.Amount == 13 && !fixed.Load() {
			return errors.New("unlucky amount")
		}
		c.State.Events++
		return nil
	})
	projection.OnAny(p, func(_ context.Context, c *projection.Context[audit], _ projection.Meta) error {
		c.State.Events++
		return nil
	})
	return p
}

// TestRunStatusRetrySkip runs `projector run` with the examples and a
// projection that parks two wallets, reads `status` in both formats, then
// retries one parked wallet after the fix and skips the other's event.
func TestRunStatusRetrySkip(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var fixed atomic.Bool
	defs := func(pool *pgxpool.Pool) []projection.Definer {
		return append(examples.All(pool), auditProjection(&fixed))
	}
	b.defs = defs
	b.env["DATABASE_MAX_CONNS"] = "20"
	b.wallets(t, 50, 100, 200)
	b.append(t, "w-7", "MoneyWasAddedToWallet", map[string]int64{"amount": 13})
	b.append(t, "w-9", "MoneyWasAddedToWallet", map[string]int64{"amount": 13})
	b.wallets(t, 50, 300)
	b.runProjector(t, defs)

	b.env["PROJECTIONS"] = "wallet_balance,wallet_audit" // what status shows
	devtest.Eventually(t, 30*time.Second, func() error {
		st := b.status(t)
		a, wb := st["wallet_audit"], st["wallet_balance"]
		if len(st) != 2 {
			return fmt.Errorf("status shows %d projections", len(st))
		}
		if len(a.Parked) != 2 || a.Owners["r1"] != 64 {
			return fmt.Errorf("wallet_audit: %d parked, owners %v", len(a.Parked), a.Owners)
		}
		if wb.State != "active" || wb.Store != "postgres" || wb.Partitions != 50 || wb.Owners["r1"] != 64 {
			return fmt.Errorf("wallet_balance: %+v", wb)
		}
		return examplecheck.Verify(context.Background(), b.pool, nil, "wallet_balance")
	})
	r := call(context.Background(), b.env, defs, "status")
	if r.code != 0 {
		t.Fatalf("status: %v", r)
	}
	t.Logf("projector status:\n%s", r.stdout)
	for _, want := range []string{
		"NAME            KIND         STATE   STORE     PARTITIONS  POSITION  HEAD  LAG  OWNERS  PARKED",
		"wallet_audit    partitioned  active  kv        50",
		"r1:64   2",
		"NAME          PARTITION   SEQ  EVENT TYPE             ATTEMPTS",
		"wallet_audit  wallet/w-7  ",
		"MoneyWasAddedToWallet  2 ",
		"unlucky amount",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, r.stdout)
		}
	}

	fixed.Store(true)
	if r := call(context.Background(), b.env, defs, "retry", "wallet_audit", "wallet/w-7"); r.code != 0 || !strings.Contains(r.stdout, "retrying") {
		t.Fatalf("retry: %v", r)
	}
	if r := call(context.Background(), b.env, defs, "skip", "wallet_audit", "wallet/w-9"); r.code != 0 {
		t.Fatalf("skip: %v", r)
	}
	if r := call(context.Background(), b.env, defs, "skip", "wallet_audit", "wallet/w-1"); r.code != 1 || !strings.Contains(r.stderr, "no failing event") {
		t.Errorf("skip of a healthy partition: %v", r)
	}
	if r := call(context.Background(), b.env, defs, "retry", "ticket_counts", "wallet/w-1"); r.code != 1 || !strings.Contains(r.stderr, `only partition is "global"`) {
		t.Errorf("retry of a global projection's other partition: %v", r)
	}
	// w-7 counts all its 5 events, w-9 all but the skipped one; the others 4.
	d := auditProjection(&fixed).Def()
	nc, err := nats.Connect(b.env["NATS_URL"])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	store := projector.StoreFor(js, d, 1)
	devtest.Eventually(t, 20*time.Second, func() error {
		for id, want := range map[string]int{"w-7": 5, "w-9": 4, "w-1": 4} {
			key := "wallet/" + id
			rec, err := store.Get(context.Background(), projector.SlotOf(key, projectionspec.Of(d).Settings().Slots), key)
			if err != nil || rec == nil {
				return fmt.Errorf("%s: %v %v", key, rec, err)
			}
			var a audit
			_ = json.Unmarshal(rec.State, &a)
			if a.Events != want || rec.Parked != nil {
				return fmt.Errorf("%s: %d events (parked %v), want %d", key, a.Events, rec.Parked, want)
			}
		}
		if n := len(b.status(t)["wallet_audit"].Parked); n != 0 {
			return fmt.Errorf("%d parked", n)
		}
		return nil
	})
}

// TestAdminCommands drives init, backfill, rebuild (whole and one
// partition), reset and delete through the command line while a replica
// runs.
func TestAdminCommands(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.wallets(t, 30, 100)
	// init before any replica: the read model exists at once.
	if r := call(ctx, b.env, examples.All, "init", "wallet_balance"); r.code != 0 {
		t.Fatalf("init: %v", r)
	}
	if _, err := examplecheck.ReadWallets(ctx, b.pool); err != nil {
		t.Fatalf("after init: %v", err)
	}
	b.runProjector(t, examples.All)
	b.wallets(t, 30, 50)

	// backfill runs while the application keeps appending deposits, as it
	// does in production. (On a source that went quiet it does not finish
	// yet: see TestBackfillIdleSource.)
	backfill := func() {
		t.Helper()
		bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		wctx, stopWriting := context.WithCancel(ctx)
		writing := make(chan struct{})
		go func() {
			defer close(writing)
			tick := time.NewTicker(700 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-wctx.Done():
					return
				case <-tick.C:
					res, err := eventstore.Append(wctx, b.pool, "wallet", "live", eventstore.ExpectAny,
						eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: map[string]int64{"amount": 1}})
					if err != nil && wctx.Err() == nil {
						t.Errorf("append: %v", err)
						return
					}
					_ = res
				}
			}
		}()
		r := call(bctx, b.env, examples.All, "backfill", "wallet_balance")
		stopWriting()
		<-writing
		if r.code != 0 || !strings.Contains(r.stdout, "wallet_balance caught up") {
			t.Fatalf("backfill: %v", r)
		}
		devtest.Eventually(t, 10*time.Second, func() error { return examplecheck.Verify(ctx, b.pool, nil, "wallet_balance") })
	}
	backfill()

	// Rebuild one wallet after damaging its row.
	if _, err := b.pool.Exec(ctx, `UPDATE wallet_balance SET balance = 0, owner = 'x' WHERE wallet_id = 'w-3'`); err != nil {
		t.Fatal(err)
	}
	if r := call(ctx, b.env, examples.All, "rebuild", "wallet_balance", "--partition", "wallet/w-3"); r.code != 0 {
		t.Fatalf("rebuild --partition: %v", r)
	}
	devtest.Eventually(t, 20*time.Second, func() error { return examplecheck.Verify(ctx, b.pool, nil, "wallet_balance") })

	// Rebuild all of it after damaging every row.
	if _, err := b.pool.Exec(ctx, `UPDATE wallet_balance SET balance = 0`); err != nil {
		t.Fatal(err)
	}
	r := call(ctx, b.env, examples.All, "rebuild", "wallet_balance")
	if r.code != 0 || !strings.Contains(r.stdout, "not emitted again") {
		t.Fatalf("rebuild: %v", r)
	}
	b.wallets(t, 30, 25)
	backfill()

	// Delete removes the read model; the replica stops running it.
	r = call(ctx, b.env, examples.All, "delete", "ticket_counts", "--yes")
	if r.code != 0 {
		t.Fatalf("delete: %v", r)
	}
	if _, err := examplecheck.ReadTicketCounts(ctx, b.pool); err == nil {
		t.Fatal("ticket_counts still there after delete")
	}
	if st := b.status(t)["ticket_counts"]; st.State != "deleted" {
		t.Fatalf("after delete: %+v", st)
	}
	if r := call(ctx, b.env, examples.All, "backfill", "ticket_counts"); r.code != 1 || !strings.Contains(r.stderr, "is deleted") {
		t.Fatalf("backfill of a deleted projection: %v", r)
	}
	if r := call(ctx, b.env, examples.All, "init", "ticket_counts"); r.code != 0 {
		t.Fatalf("init after delete: %v", r)
	}
	if st := b.status(t)["ticket_counts"]; st.State != "active" {
		t.Fatalf("after init: %+v", st)
	}
	// The running replica takes it up again and replays it.
	if _, err := eventstore.Append(ctx, b.pool, "ticket", "t-1", eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "TicketWasRegistered", Payload: map[string]string{"type": "bug"}}); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 20*time.Second, func() error {
		return examplecheck.Verify(ctx, b.pool, nil, "ticket_counts", "wallet_balance")
	})
}
