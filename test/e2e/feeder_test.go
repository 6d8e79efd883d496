package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
)

// testSeed returns a seed for the test's random choices and logs it.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return seed
}

// waitNewMessages waits until stream EVENTS holds n more messages than
// base, failing at once if the feeder f has exited.
func waitNewMessages(t *testing.T, js jetstream.JetStream, f *proc, base, n uint64, within time.Duration) uint64 {
	t.Helper()
	var got uint64
	devtest.Eventually(t, within, func() error {
		if f != nil && f.exited() {
			t.Fatalf("%s exited: %s", f.name, f.state)
		}
		var err error
		if got, err = streamCount(context.Background(), js); err != nil {
			return err
		}
		if got < base+n {
			return fmt.Errorf("stream EVENTS holds %d messages, waiting for %d", got, base+n)
		}
		return nil
	})
	return got
}

// mustStreamCount is the number of messages in stream EVENTS, asked until
// the server answers (the test's connection may be reconnecting).
func mustStreamCount(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	var n uint64
	devtest.Eventually(t, 10*time.Second, func() (err error) {
		n, err = streamCount(context.Background(), js)
		return err
	})
	return n
}

// TestFeederSurvivesSIGKILL is G1 from the outside: writers append
// continuously while the feeder process is killed with SIGKILL at random
// moments (after a random number of new messages reached the stream) and
// restarted each time. Every committed event must be in EVENTS exactly once,
// each aggregate in version order.
func TestFeederSurvivesSIGKILL(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	env := feederEnv(dbURL, ns.URL(), "a")

	// About 1000 events a second, so that the stream grows while the
	// feeder dies and restarts (each restart waits out the 2 s lease).
	w := startWriters(t, pool, 4, 10*time.Millisecond, seed)
	f := startFeeder(t, "feeder a (run 1)", env)
	const kills, minEvents = 5, 15000
	var base uint64 // messages in the stream when the current feeder started
	for i := range kills {
		n := uint64(1 + rng.IntN(3000))
		at := waitNewMessages(t, js, f, base, n, 60*time.Second)
		f.kill()
		t.Logf("kill %d: SIGKILL after %d new messages (stream held %d, %d committed)", i+1, n, at, w.committed.Load())
		if base = mustStreamCount(t, js); base < at {
			t.Fatalf("stream EVENTS shrank from %d to %d messages", at, base)
		}
		f = startFeeder(t, fmt.Sprintf("feeder a (run %d)", i+2), env)
	}
	devtest.Eventually(t, 60*time.Second, func() error {
		if c := w.committed.Load(); c < minEvents {
			return fmt.Errorf("%d events committed, want %d", c, minEvents)
		}
		return nil
	})
	w.halt()

	total := uint64(len(storeEvents(t, pool)))
	waitStreamAtLeast(t, js, total, 60*time.Second)
	if f.exited() {
		t.Errorf("the last feeder exited: %s", f.state)
	}
	verifyExactlyOnce(t, pool, js)
}

// TestStandbyTakesOver: two feeder processes with the same name; exactly
// one publishes, and when it is killed the standby takes over within a few
// seconds (lease TTL 2 s).
func TestStandbyTakesOver(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	feeders := map[string]*proc{
		"a": startFeeder(t, "feeder a", feederEnv(dbURL, ns.URL(), "a")),
		"b": startFeeder(t, "feeder b", feederEnv(dbURL, ns.URL(), "b")),
	}
	ctx := context.Background()

	n := appendWallets(t, pool, "before", 200, 5)
	waitStreamAtLeast(t, js, uint64(n), 30*time.Second)
	var holder string
	devtest.Eventually(t, 10*time.Second, func() (err error) {
		holder, err = leaseHolder(ctx, js)
		return err
	})
	active, ok := feeders[holder]
	if !ok {
		t.Fatalf("lease held by %q, want a or b", holder)
	}
	standbyName := map[string]string{"a": "b", "b": "a"}[holder]
	standby := feeders[standbyName]
	if !active.logged("lease: acquired") || standby.logged("lease: acquired") {
		t.Fatalf("lease acquired by a: %v, by b: %v; want only by %s, the holder in the KV bucket",
			feeders["a"].logged("lease: acquired"), feeders["b"].logged("lease: acquired"), holder)
	}
	verifyExactlyOnce(t, pool, js)

	const bound = 8 * time.Second // lease TTL 2 s, plus the standby's poll and start
	killedAt := time.Now()
	active.kill()
	n += appendWallets(t, pool, "after", 100, 2)
	devtest.Eventually(t, bound-time.Since(killedAt), func() error {
		got, err := streamCount(ctx, js)
		if err == nil && got < uint64(n) {
			err = fmt.Errorf("stream EVENTS holds %d messages, want %d", got, n)
		}
		return err
	})
	t.Logf("feeder %s took over %v after feeder %s was killed", standbyName, time.Since(killedAt).Round(time.Millisecond), holder)
	if h, err := leaseHolder(ctx, js); err != nil || h != standbyName {
		t.Errorf("lease holder after the takeover: %q (%v), want %q", h, err, standbyName)
	}
	if !standby.logged("lease: acquired") {
		t.Errorf("feeder %s published without logging that it acquired the lease", standbyName)
	}
	verifyExactlyOnce(t, pool, js)
}

// TestNATSServerRestart: the nats-server process is killed with SIGKILL
// mid-stream, twice, and started again on the same port and store
// directory; the feeder reconnects and every event is published once.
func TestNATSServerRestart(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)

	appendWallets(t, pool, "backlog", 1000, 5) // the first crash hits a backlog
	f := startFeeder(t, "feeder a", feederEnv(dbURL, ns.URL(), "a"))
	w := startWriters(t, pool, 2, 10*time.Millisecond, seed)
	var base uint64
	for i := range 2 {
		n := uint64(1 + rng.IntN(2000))
		at := waitNewMessages(t, js, f, base, n, 60*time.Second)
		ns.kill()
		t.Logf("crash %d: nats-server killed after %d new messages (stream held %d)", i+1, n, at)
		ns.start()
		restarted := time.Now()
		if base = mustStreamCount(t, js); base < at {
			t.Fatalf("stream EVENTS lost messages in the crash: %d before, %d after", at, base)
		}
		base = waitNewMessages(t, js, f, base, 1, 30*time.Second)
		t.Logf("crash %d: the feeder published again %v after the server restarted", i+1, time.Since(restarted).Round(time.Millisecond))
	}
	// The feeder publishes again after the last restart.
	waitNewMessages(t, js, f, base, 500, 60*time.Second)
	w.halt()

	total := uint64(len(storeEvents(t, pool)))
	waitStreamAtLeast(t, js, total, 60*time.Second)
	if f.exited() {
		t.Errorf("the feeder exited: %s", f.state)
	}
	if !f.logged("NATS reconnected") {
		t.Errorf("the feeder did not log that it reconnected to NATS")
	}
	verifyExactlyOnce(t, pool, js)
}

// TestBadConfigurationFailsFast is G8 for configuration: with several bad
// settings at once the feeder exits at once, non-zero, naming every one.
// It also checks the commands that need no NATS server: migrate and help.
func TestBadConfigurationFailsFast(t *testing.T) {
	t.Parallel()
	r := runFeeder(t, map[string]string{
		// DATABASE_URL is missing.
		"FEEDER_BATCH_SIZE":      "abc",
		"FEEDER_ON_OVERSIZED":    "drop",
		"FEEDER_STREAM_REPLICAS": "2",
		"FEEDER_BATCHSIZE":       "5", // a typo
		"LOG_LEVEL":              "loud",
	}, "run")
	if r.code == 0 {
		t.Errorf("exit code 0, want non-zero")
	}
	if r.took > 5*time.Second {
		t.Errorf("took %v to fail, want fail fast", r.took)
	}
	// One problem line per bad variable, naming it and what is wrong.
	want := map[string][]string{
		"DATABASE_URL":           {"required"},
		"FEEDER_BATCH_SIZE":      {`"abc"`},
		"FEEDER_ON_OVERSIZED":    {`"drop"`, "stop", "dead-letter"},
		"FEEDER_STREAM_REPLICAS": {"2", "1, 3 or 5"},
		"FEEDER_BATCHSIZE":       {"unknown variable", "FEEDER_BATCH_SIZE"},
		"LOG_LEVEL":              {`"loud"`},
	}
	lines := map[string][]string{}
	for _, l := range strings.Split(r.stderr, "\n") {
		l = strings.TrimSpace(l)
		name, _, _ := strings.Cut(l, ":")
		name, _, _ = strings.Cut(name, " ")
		if _, ok := want[name]; ok {
			lines[name] = append(lines[name], l)
		}
	}
	for name, words := range want {
		switch got := lines[name]; {
		case len(got) == 0:
			t.Errorf("no problem reported for %s", name)
		case len(got) > 1:
			t.Errorf("%s reported %d times, want once:\n  %s", name, len(got), strings.Join(got, "\n  "))
		default:
			for _, w := range words {
				if !strings.Contains(got[0], w) {
					t.Errorf("problem %q does not say %q", got[0], w)
				}
			}
		}
	}
	if t.Failed() {
		t.Logf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}

	// migrate on a fresh database creates the event store; again is a no-op.
	dbURL := newDatabase(t)
	env := map[string]string{"DATABASE_URL": dbURL, "LOG_FORMAT": "json"}
	for i := range 2 {
		if r := runFeeder(t, env, "migrate"); r.code != 0 {
			t.Fatalf("feeder migrate (run %d): exit code %d\n%s", i+1, r.code, r.stderr)
		}
	}
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var table *string
	if err := conn.QueryRow(context.Background(), `SELECT to_regclass('eventstore.events')::text`).Scan(&table); err != nil {
		t.Fatal(err)
	}
	if table == nil {
		t.Errorf("feeder migrate exited 0 but eventstore.events does not exist")
	}

	if r := runFeeder(t, nil, "help"); r.code != 0 || !strings.Contains(r.stdout, "migrate") || !strings.Contains(r.stdout, "status") {
		t.Errorf("feeder help: exit code %d, stdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if r := runFeeder(t, nil, "frobnicate"); r.code == 0 || !strings.Contains(r.stderr, "frobnicate") {
		t.Errorf("feeder frobnicate: exit code %d, stderr:\n%s", r.code, r.stderr)
	}
}

// statusReport is the JSON printed by `feeder status --json`.
type statusReport struct {
	Status *struct {
		Name      string `json:"name"`
		Instance  string `json:"instance"`
		State     string `json:"state"`
		Position  int64  `json:"position"`
		StreamSeq uint64 `json:"stream_seq"`
	} `json:"status"`
	Checkpoint *struct {
		Cursor struct {
			Position int64
		} `json:"cursor"`
		StreamSeq uint64 `json:"stream_seq"`
	} `json:"checkpoint"`
}

// TestStatusCommand: once the feeder has caught up, `feeder status --json`
// shows the store's last position.
func TestStatusCommand(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	env := feederEnv(dbURL, ns.URL(), "a")
	f := startFeeder(t, "feeder a", env)

	n := appendWallets(t, pool, "status", 300, 3)
	waitStreamAtLeast(t, js, uint64(n), 30*time.Second)
	last := lastPosition(t, pool)

	var rep statusReport
	var out string
	devtest.Eventually(t, 10*time.Second, func() error {
		r := runFeeder(t, env, "status", "--json")
		out = r.stdout
		if r.code != 0 {
			return fmt.Errorf("exit code %d: %s", r.code, r.stderr)
		}
		rep = statusReport{}
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
			return fmt.Errorf("%w: %s", err, r.stdout)
		}
		switch {
		case rep.Status == nil || rep.Checkpoint == nil:
			return fmt.Errorf("no status or checkpoint yet: %s", r.stdout)
		case rep.Status.Position != last || rep.Checkpoint.Cursor.Position != last:
			return fmt.Errorf("status at position %d, checkpoint at %d, want the store's last position %d",
				rep.Status.Position, rep.Checkpoint.Cursor.Position, last)
		case rep.Status.State != "caught-up":
			return fmt.Errorf("state %q at the store's last position, want caught-up", rep.Status.State)
		}
		return nil
	})
	if rep.Status.Instance != "a" || rep.Status.Name != "events" || rep.Checkpoint.StreamSeq != uint64(n) {
		t.Errorf("status --json:\n%s\nwant instance a, name events, stream_seq %d", out, n)
	}

	r := runFeeder(t, env, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "caught-up") || !strings.Contains(r.stdout, " "+strconv.FormatInt(last, 10)+" ") {
		t.Errorf("feeder status: exit code %d, stdout:\n%s\nwant state caught-up and position %d; stderr:\n%s", r.code, r.stdout, last, r.stderr)
	}
	noNATS := feederEnv(dbURL, "", "a")
	if r := runFeeder(t, noNATS, "status"); r.code == 0 || !strings.Contains(r.stderr, "NATS_URL") {
		t.Errorf("feeder status without NATS_URL: exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	if f.exited() {
		t.Errorf("the feeder exited: %s", f.state)
	}
}
