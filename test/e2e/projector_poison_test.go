package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
)

// The projection's defaults (projection.Retries): a failing partition is
// tried 5 times, 100ms doubling between tries, before it is parked. The
// projector service has no variable to change them.
const (
	poisonAttempts   = 5
	poisonBackoffMin = 100 * time.Millisecond
)

// TestPoisonPartitionParkedRetriedSkipped is G4 with real processes: a
// feeder, a projector running wallet_balance and a nats-server, against
// PostgreSQL. A trigger on the read model's table makes the handler's write
// fail for one wallet only. That wallet's partition retries with backoff and
// is parked with its error, visible in `projector status` (table and JSON),
// while the 2000 other wallets complete. It stays parked across a SIGKILL
// of the replica while it gets more events; a retry before the fix parks it
// again. Once the trigger is gone, `projector retry` resumes it from its own
// position and every balance equals the fold of the events. A second wallet fails on one event that
// stays poisonous: `projector skip` skips that event and its balance then
// equals the fold without it.
func TestPoisonPartitionParkedRetriedSkipped(t *testing.T) {
	ctx := context.Background()
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	startFeeder(t, "feeder", feederEnv(dbURL, ns.URL(), "f"))
	env := poisonEnv(dbURL, ns.URL())
	proj := startProc(t, "projector", bins.build(t).projector, env, "run")
	alive := func() {
		if proj.exited() {
			t.Fatalf("projector exited: %s", proj.state)
		}
	}

	// The projection creates its table when it initialises.
	devtest.Eventually(t, 30*time.Second, func() error {
		alive()
		var ok bool
		if err := pool.QueryRow(ctx, `SELECT to_regclass('wallet_balance') IS NOT NULL`).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return errors.New("no table wallet_balance yet")
		}
		return nil
	})

	// Wallet poison-a is applied up to its second event before anything
	// fails: that is the position it must later resume from.
	const a, b = "poison-a", "poison-b"
	keyA, keyB := "wallet/"+a, "wallet/"+b
	resA := appendWallet(t, pool, a, eventstore.ExpectNoStream,
		opened(a), added(100))
	ownPosA := resA.LastPosition
	devtest.Eventually(t, 30*time.Second, func() error {
		alive()
		return checkWallets(ctx, pool, nil)
	})

	// From now on every write of poison-a's row fails.
	sqlExec(t, pool, `CREATE FUNCTION poison_a() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.wallet_id = 'poison-a' THEN
    RAISE EXCEPTION 'poisoned wallet %', NEW.wallet_id;
  END IF;
  RETURN NEW;
END $$`)
	sqlExec(t, pool, `CREATE TRIGGER poison_a BEFORE INSERT OR UPDATE ON wallet_balance FOR EACH ROW EXECUTE FUNCTION poison_a()`)

	// Thousands of wallets around the failing events, most of them after.
	n := appendWallets(t, pool, "w", 500, 3)
	resA = appendWallet(t, pool, a, resA.Version, added(1000), added(2000), withdrawn(500))
	failPosA := resA.FirstPosition
	n += 3 + appendWallets(t, pool, "v", 1500, 3)
	t.Logf("%d events appended after the trigger; poison-a fails at position %d", n, failPosA)

	// poison-a is parked after its retries …
	parked := waitParked(t, env, keyA, proj)
	checkParked(t, parked, keyA, ownPosA, failPosA, examples.TypeMoneyWasAddedToWallet, "poisoned wallet poison-a")
	// … and every other wallet completes; poison-a stays at its position.
	devtest.Eventually(t, 60*time.Second, func() error {
		alive()
		return checkWallets(ctx, pool, func(e eventstore.Event) bool { return e.AggregateID == a && e.Position > ownPosA })
	})
	checkBackoff(t, proj, keyA)
	// Still parked, no more attempts, shown by both forms of status.
	sts := projectorStatusJSON(t, env)
	checkParked(t, findParked(sts, keyA), keyA, ownPosA, failPosA, examples.TypeMoneyWasAddedToWallet, "poisoned wallet poison-a")
	if len(sts[0].Parked) != 1 {
		t.Fatalf("status --json: %d parked partitions, want only %s: %+v", len(sts[0].Parked), keyA, sts[0].Parked)
	}
	checkStatusTable(t, env, keyA, findParked(sts, keyA).Parked, "poisoned wallet poison-a")

	// Parked survives a crash: the replica is killed and started again;
	// new wallets complete, poison-a is not tried again. poison-a gets
	// more events meanwhile, more than a batch (500): the retry must read
	// them all from its own position.
	proj.kill()
	proj = startProc(t, "projector (after SIGKILL)", bins.build(t).projector, env, "run")
	appendWallets(t, pool, "x", 100, 3)
	for range 3 {
		resA = appendWallet(t, pool, a, resA.Version, deposits(400)...)
		appendWallets(t, pool, fmt.Sprintf("y%d", resA.Version), 50, 3)
	}
	devtest.Eventually(t, 60*time.Second, func() error {
		alive()
		return checkWallets(ctx, pool, func(e eventstore.Event) bool { return e.AggregateID == a && e.Position > ownPosA })
	})
	checkParked(t, findParked(projectorStatusJSON(t, env), keyA), keyA, ownPosA, failPosA, examples.TypeMoneyWasAddedToWallet, "poisoned wallet poison-a")
	if proj.logged("partition failed; retrying") || proj.logged("partition parked") {
		t.Fatalf("the restarted projector tried the parked %s again", keyA)
	}

	// A retry before the fix tries it again, with backoff, and parks it again.
	before := findParked(projectorStatusJSON(t, env), keyA).Parked.Since
	if r := runProjector(t, env, "retry", examples.WalletBalanceName, keyA); r.code != 0 {
		t.Fatalf("projector retry: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		alive()
		rec := findParked(projectorStatusJSON(t, env), keyA)
		if rec == nil || !rec.Parked.Since.After(before) {
			return fmt.Errorf("%s is not parked again: %+v", keyA, rec)
		}
		checkParked(t, rec, keyA, ownPosA, failPosA, examples.TypeMoneyWasAddedToWallet, "poisoned wallet poison-a")
		return nil
	})

	// Fixed: poison-a resumes from its own position with `projector retry`.
	sqlExec(t, pool, `DROP TRIGGER poison_a ON wallet_balance`)
	if r := runProjector(t, env, "retry", examples.WalletBalanceName, keyA); r.code != 0 {
		t.Fatalf("projector retry: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		alive()
		if err := checkWallets(ctx, pool, nil); err != nil {
			return err
		}
		return noneParked(t, env)
	})
	t.Logf("%s retried: every wallet equals the fold", keyA)

	// poison-b fails on one event only, which stays poisonous: skip it.
	sqlExec(t, pool, `CREATE FUNCTION poison_b() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.wallet_id = 'poison-b' AND NEW.balance >= 1000000 THEN
    RAISE EXCEPTION 'poisoned wallet %: balance %', NEW.wallet_id, NEW.balance;
  END IF;
  RETURN NEW;
END $$`)
	sqlExec(t, pool, `CREATE TRIGGER poison_b BEFORE INSERT OR UPDATE ON wallet_balance FOR EACH ROW EXECUTE FUNCTION poison_b()`)
	resB := appendWallet(t, pool, b, eventstore.ExpectNoStream,
		opened(b), added(100), added(7777777), added(300), withdrawn(50))
	skipPos := resB.FirstPosition + 2
	appendWallets(t, pool, "u", 300, 3)
	parked = waitParked(t, env, keyB, proj)
	if p := parked.Parked; p == nil || p.Position != skipPos || p.EventType != examples.TypeMoneyWasAddedToWallet ||
		p.Attempts != poisonAttempts || !strings.Contains(p.Error, "poisoned wallet poison-b: balance 7777877") {
		t.Fatalf("%s parked as %+v, want the event at position %d (%s) after %d attempts with the trigger's error",
			keyB, p, skipPos, examples.TypeMoneyWasAddedToWallet, poisonAttempts)
	}
	devtest.Eventually(t, 60*time.Second, func() error {
		alive()
		// Every other wallet equals the fold. poison-b's events before the
		// poisonous one may have been applied in an earlier batch: its row
		// is absent or a prefix of its history, never past the poison.
		if err := checkWallets(ctx, pool, func(e eventstore.Event) bool { return e.AggregateID == b }, b); err != nil {
			return err
		}
		rows, err := examplecheck.ReadWallets(ctx, pool)
		if err != nil {
			return err
		}
		if row, ok := rows[b]; ok && row.Balance > 100 {
			return fmt.Errorf("%s is %+v while parked before its poisonous deposit", b, row)
		}
		return nil
	})
	if r := runProjector(t, env, "skip", examples.WalletBalanceName, keyB); r.code != 0 {
		t.Fatalf("projector skip: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		alive()
		if err := checkWallets(ctx, pool, func(e eventstore.Event) bool { return e.Position == skipPos }); err != nil {
			return err
		}
		return noneParked(t, env)
	})
	rows, err := examplecheck.ReadWallets(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if got := rows[b].Balance; got != 350 {
		t.Fatalf("%s balance %d after the skip, want 350", b, got)
	}
	t.Logf("%s: event at position %d skipped; %d wallets equal the fold", keyB, skipPos, len(rows))
}

// poisonEnv is the environment of the projector's processes (run and the
// commands): wallet_balance alone.
func poisonEnv(dbURL, natsURL string) map[string]string {
	env := projectorEnv(dbURL, natsURL, "p1")
	env["PROJECTIONS"] = examples.WalletBalanceName
	return env
}

func opened(owner string) eventstore.NewEvent {
	return eventstore.NewEvent{Type: examples.TypeWalletOpened, Payload: map[string]string{"owner": owner}}
}

func added(amount int) eventstore.NewEvent {
	return eventstore.NewEvent{Type: examples.TypeMoneyWasAddedToWallet, Payload: map[string]int{"amount": amount}}
}

// deposits are n MoneyWasAddedToWallet of 1, 2 … n cents.
func deposits(n int) []eventstore.NewEvent {
	evs := make([]eventstore.NewEvent, n)
	for i := range evs {
		evs[i] = added(i + 1)
	}
	return evs
}

func withdrawn(amount int) eventstore.NewEvent {
	return eventstore.NewEvent{Type: examples.TypeMoneyWasWithdrawnFromWallet, Payload: map[string]int{"amount": amount}}
}

func appendWallet(t *testing.T, pool *pgxpool.Pool, id string, expected int64, evs ...eventstore.NewEvent) eventstore.AppendResult {
	t.Helper()
	res, err := eventstore.Append(context.Background(), pool, "wallet", id, expected, evs...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func sqlExec(t *testing.T, pool *pgxpool.Pool, sql string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// checkWallets compares the table wallet_balance with the fold of the
// store's events, leaving out those drop (when not nil) says; the wallets in
// ignore are not compared.
func checkWallets(ctx context.Context, pool *pgxpool.Pool, drop func(eventstore.Event) bool, ignore ...string) error {
	events, err := examplecheck.ReadAllEvents(ctx, pool)
	if err != nil {
		return err
	}
	if drop != nil {
		events = slices.DeleteFunc(events, drop)
	}
	want, err := examplecheck.FoldWallets(events)
	if err != nil {
		return err
	}
	got, err := examplecheck.ReadWallets(ctx, pool)
	if err != nil {
		return err
	}
	for _, id := range ignore {
		delete(got, id)
		delete(want, id)
	}
	if err := examplecheck.Diff(got, want); err != nil {
		return fmt.Errorf("wallets differ from the fold: %w", err)
	}
	return nil
}

func runProjector(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	return runBinary(t, bins.build(t).projector, env, args...)
}

// projectorStatusJSON runs `projector status --json`.
func projectorStatusJSON(t *testing.T, env map[string]string) []projector.Status {
	t.Helper()
	r := runProjector(t, env, "status", "--json")
	if r.code != 0 {
		t.Fatalf("projector status --json: exit %d\n%s", r.code, r.stderr)
	}
	var sts []projector.Status
	if err := json.Unmarshal([]byte(r.stdout), &sts); err != nil {
		t.Fatalf("projector status --json: %v\n%s", err, r.stdout)
	}
	if len(sts) != 1 || sts[0].Name != examples.WalletBalanceName {
		t.Fatalf("projector status --json: want wallet_balance alone, got\n%s", r.stdout)
	}
	return sts
}

func findParked(sts []projector.Status, key string) *projector.Record {
	for _, st := range sts {
		for i, r := range st.Parked {
			if r.Key == key {
				return &st.Parked[i]
			}
		}
	}
	return nil
}

// waitParked waits until `projector status --json` shows the partition
// parked.
func waitParked(t *testing.T, env map[string]string, key string, proj *proc) *projector.Record {
	t.Helper()
	var rec *projector.Record
	devtest.Eventually(t, 30*time.Second, func() error {
		if proj.exited() {
			t.Fatalf("projector exited: %s", proj.state)
		}
		if rec = findParked(projectorStatusJSON(t, env), key); rec == nil {
			return fmt.Errorf("%s is not parked", key)
		}
		return nil
	})
	return rec
}

func noneParked(t *testing.T, env map[string]string) error {
	if p := projectorStatusJSON(t, env)[0].Parked; len(p) > 0 {
		return fmt.Errorf("%d partitions parked, first %s: %+v", len(p), p[0].Key, p[0].Parked)
	}
	return nil
}

// checkParked checks a parked partition's record: its own position (the
// last event it applied) and the failing event.
func checkParked(t *testing.T, rec *projector.Record, key string, ownPos, failPos int64, typ, errText string) {
	t.Helper()
	if rec == nil || rec.Parked == nil {
		t.Fatalf("%s is not parked", key)
	}
	switch p := rec.Parked; {
	case rec.Position != ownPos:
		t.Fatalf("%s parked at position %d, want %d (its last applied event)", key, rec.Position, ownPos)
	case p.Position != failPos || p.EventType != typ || p.Seq <= rec.Seq:
		t.Fatalf("%s parked on %+v (own seq %d), want the event at position %d of type %s after it", key, p, rec.Seq, failPos, typ)
	case p.Attempts != poisonAttempts:
		t.Fatalf("%s parked after %d attempts, want %d", key, p.Attempts, poisonAttempts)
	case !strings.Contains(p.Error, errText):
		t.Fatalf("%s parked with error %q, want it to contain %q", key, p.Error, errText)
	}
}

// checkBackoff checks the projector's log: the partition failed, was
// retried after 100ms, 200ms, 400ms and 800ms, and was parked with the
// last attempt.
func checkBackoff(t *testing.T, proj *proc, key string) {
	t.Helper()
	type attempt struct {
		at      time.Time
		n       int
		in      time.Duration
		parked  bool
		errText string
	}
	var got []attempt
	for _, l := range proj.logLines() {
		msg, _ := l["msg"].(string)
		if l["partition"] != key || (msg != "partition failed; retrying" && msg != "partition parked") {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(l["time"]))
		if err != nil {
			t.Fatalf("log line %v: %v", l, err)
		}
		a := attempt{at: at, parked: msg == "partition parked", errText: fmt.Sprint(l["error"])}
		if v, ok := l["attempt"].(float64); ok {
			a.n = int(v)
		}
		if v, ok := l["attempts"].(float64); ok {
			a.n = int(v)
		}
		if v, ok := l["in"].(float64); ok {
			a.in = time.Duration(v)
		}
		got = append(got, a)
	}
	describe := func() string {
		var s []string
		for _, a := range got {
			s = append(s, fmt.Sprintf("%s attempt %d in %v parked %v", a.at.Format("15:04:05.000"), a.n, a.in, a.parked))
		}
		return strings.Join(s, "\n  ")
	}
	if len(got) != poisonAttempts {
		t.Fatalf("%s: %d failures logged, want %d (%d retried, then parked):\n  %s", key, len(got), poisonAttempts, poisonAttempts-1, describe())
	}
	for i, a := range got {
		last := i == len(got)-1
		backoff := poisonBackoffMin << i
		if a.n != i+1 || a.parked != last || (!last && a.in != backoff) {
			t.Fatalf("%s: failure %d logged as attempt %d, retry in %v, parked %v; want attempt %d, retry in %v, parked %v:\n  %s",
				key, i+1, a.n, a.in, a.parked, i+1, backoff, last, describe())
		}
		if i > 0 && a.at.Sub(got[i-1].at) < got[i-1].in*9/10 {
			t.Fatalf("%s: attempt %d came %v after the previous one, before its backoff of %v:\n  %s",
				key, a.n, a.at.Sub(got[i-1].at), got[i-1].in, describe())
		}
	}
	t.Logf("%s: retried with backoff, then parked:\n  %s", key, describe())
}

// checkStatusTable checks that `projector status` counts the parked
// partition and lists it with its failing event and error.
func checkStatusTable(t *testing.T, env map[string]string, key string, p *projector.Parked, errText string) {
	t.Helper()
	r := runProjector(t, env, "status")
	if r.code != 0 {
		t.Fatalf("projector status: exit %d\n%s", r.code, r.stderr)
	}
	lines := strings.Split(r.stdout, "\n")
	var summary, row []string
	for _, l := range lines {
		f := strings.Fields(l)
		switch {
		case len(f) > 1 && f[0] == examples.WalletBalanceName && f[1] == "partitioned":
			summary = f
		case len(f) > 1 && f[0] == examples.WalletBalanceName && f[1] == key:
			row = f
		}
	}
	want := []string{examples.WalletBalanceName, key, strconv.FormatUint(p.Seq, 10), p.EventType, strconv.Itoa(p.Attempts)}
	switch {
	case summary == nil || summary[len(summary)-1] != "1":
		t.Fatalf("projector status: want wallet_balance's line with 1 parked partition:\n%s", r.stdout)
	case len(row) < len(want)+2 || !slices.Equal(row[:len(want)], want):
		t.Fatalf("projector status: want a parked line starting %q:\n%s", want, r.stdout)
	case !strings.Contains(strings.Join(row, " "), errText):
		t.Fatalf("projector status: the parked line does not show the error %q:\n%s", errText, r.stdout)
	}
	t.Logf("projector status:\n%s", r.stdout)
}
