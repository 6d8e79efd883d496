package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
)

// slotOwners counts wallet_balance's slots per replica, from the lease
// bucket.
func slotOwners(ctx context.Context, t *testing.T, env map[string]string) map[string]int {
	t.Helper()
	r := runBinary(t, bins.build(t).projector, env, "status", "--json", examples.WalletBalanceName)
	if r.code != 0 {
		t.Fatalf("status: %d %s", r.code, r.stderr)
	}
	var all []projector.Status
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || len(all) != 1 {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return all[0].Owners
}

// slotsHeld counts the slots of projection whose lease holder is replica,
// read from its lease bucket directly (no process to start: the handover
// is timed with it).
func slotsHeld(ctx context.Context, js jetstream.JetStream, projection, replica string) (int, error) {
	kv, err := js.KeyValue(ctx, contract.LeaseBucket(projection))
	if err != nil {
		return 0, err
	}
	n := 0
	for s := range 64 {
		e, err := kv.Get(ctx, "s."+strconv.Itoa(s))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		var v struct{ Holder string }
		if json.Unmarshal(e.Value(), &v) == nil && v.Holder == replica {
			n++
		}
	}
	return n, nil
}

// TestSIGTERMHandsOverAtOnce: a projector replica stopped with SIGTERM
// finishes its batch, releases its slot leases and its membership and
// exits; the other replica sees the membership go and owns every slot
// within about a second, where waiting for the lease TTL (15s here) or its
// next tick (5s) would take far longer. The read model stays equal to the
// fold. A second signal exits at once.
func TestSIGTERMHandsOverAtOnce(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	ctx := context.Background()
	startFeeder(t, "feeder", feederEnv(dbURL, ns.URL(), "f"))
	env := func(replica string) map[string]string {
		e := pipelineEnv(dbURL, ns.URL(), replica, examples.WalletBalanceName)
		e["PROJECTOR_LEASE_TTL"] = "15s"
		return e
	}
	p1 := startProjector(t, "projector p1", env("p1"))
	startProjector(t, "projector p2", env("p2"))
	for i := range 50 {
		walletDeposits(t, pool, fmt.Sprintf("w-%d", i), 4, 100)
	}
	devtest.Eventually(t, 60*time.Second, func() error {
		owners := slotOwners(ctx, t, env("cli"))
		if owners["p1"] == 0 || owners["p2"] == 0 || owners["p1"]+owners["p2"] != 64 {
			return fmt.Errorf("owners %v", owners)
		}
		return examplecheck.Verify(ctx, pool, js, examples.WalletBalanceName)
	})

	if err := p1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	devtest.Eventually(t, 10*time.Second, func() error {
		if n, err := slotsHeld(ctx, js, examples.WalletBalanceName, "p2"); err != nil || n != 64 {
			return fmt.Errorf("p2 holds %d slots: %v", n, err)
		}
		return nil
	})
	took := time.Since(stopped)
	t.Logf("p2 owned every slot %v after p1's SIGTERM", took)
	if took > 2*time.Second {
		t.Errorf("p2 owned every slot %v after p1's SIGTERM, want about 1s (lease TTL 15s, tick 5s)", took)
	}
	select {
	case <-p1.done:
	case <-time.After(10 * time.Second):
		t.Fatal("p1 did not exit within 10s of SIGTERM")
	}
	if code := p1.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("p1 exited with %d after SIGTERM, want 0", code)
	}
	if owners := slotOwners(ctx, t, env("cli")); owners["p2"] != 64 || len(owners) != 1 {
		t.Errorf("status owners %v, want p2:64", owners)
	}
	for i := range 50 {
		walletDeposits(t, pool, fmt.Sprintf("w-%d", i), 1, 7)
	}
	devtest.Eventually(t, 30*time.Second, func() error { return examplecheck.Verify(ctx, pool, js, examples.WalletBalanceName) })
}

// TestSecondSignalExitsAtOnce: while a graceful stop waits (here the
// operations endpoint, which gives a request that is still arriving 2s to
// finish), a second signal exits at once with status 1.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	dbURL := newDatabase(t)
	ns := startNATS(t)
	env := feederEnv(dbURL, ns.URL(), "f")
	env["OPS_ADDR"] = opsAddr(t)
	f := startFeeder(t, "feeder", env)
	devtest.Eventually(t, 30*time.Second, func() error {
		if code, body, err := httpGet(env["OPS_ADDR"], opsserver.ReadyPath); err != nil || code != 200 {
			return fmt.Errorf("readyz: %d %q %v", code, body, err)
		}
		return nil
	})
	// A request whose headers have not all arrived keeps the endpoint's
	// graceful shutdown waiting.
	c, err := net.Dial("tcp", env["OPS_ADDR"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 10*time.Second, func() error {
		if !f.logged("shutting down; signal again to exit at once") {
			return errors.New("first signal not handled yet")
		}
		return nil
	})
	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	second := time.Now()
	select {
	case <-f.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the feeder did not exit within 10s of a second SIGTERM")
	}
	took := time.Since(second)
	if code := f.cmd.ProcessState.ExitCode(); code != 1 || !f.logged("exiting at once") || took > time.Second {
		t.Errorf("after a second SIGTERM: exit %d after %v, logged \"exiting at once\": %v; want exit 1 at once", code, took, f.logged("exiting at once"))
	}
}

// TestFeederSIGTERMHandsOverAtOnce: the active feeder releases its lease on
// SIGTERM; the standby publishes new events well before the lease TTL.
func TestFeederSIGTERMHandsOverAtOnce(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	ctx := context.Background()
	feeders := map[string]*proc{}
	for _, name := range []string{"f1", "f2"} {
		env := feederEnv(dbURL, ns.URL(), name)
		env["FEEDER_LEASE_TTL"] = "10s"
		feeders[name] = startFeeder(t, "feeder "+name, env)
	}
	walletDeposits(t, pool, "w-1", 1, 100)
	var active string
	devtest.Eventually(t, 30*time.Second, func() error {
		h, err := leaseHolder(ctx, js)
		if err != nil || feeders[h] == nil {
			return fmt.Errorf("holder %q: %v", h, err)
		}
		active = h
		return nil
	})
	base := mustStreamCount(t, js)
	if err := feeders[active].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	<-feeders[active].done
	walletDeposits(t, pool, "w-1", 1, 100)
	devtest.Eventually(t, 5*time.Second, func() error {
		if n := mustStreamCount(t, js); n <= base {
			return fmt.Errorf("%d messages, waiting for more than %d", n, base)
		}
		return nil
	})
	if took := time.Since(stopped); took > 5*time.Second {
		t.Errorf("the standby published %v after the active feeder's SIGTERM; the lease TTL is 10s", took)
	}
}

// TestEmitterSIGTERMHandsOverAtOnce: the active emitter releases its lease
// on SIGTERM; the standby relays new derived events well before the TTL.
func TestEmitterSIGTERMHandsOverAtOnce(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	ctx := context.Background()
	startFeeder(t, "feeder", feederEnv(dbURL, ns.URL(), "f"))
	startProjector(t, "projector", pipelineEnv(dbURL, ns.URL(), "p1", examples.WalletBalanceName))
	emitters := map[string]*proc{}
	for _, name := range []string{"e1", "e2"} {
		env := emitterEnv(dbURL, ns.URL(), name)
		env["EMITTER_LEASE_TTL"] = "10s"
		emitters[name] = startEmitter(t, "emitter "+name, env)
	}
	walletDeposits(t, pool, "w-1", 1, 100)
	own := contract.ProjectionStream(examples.WalletBalanceName)
	var active string
	devtest.Eventually(t, 30*time.Second, func() error {
		// The first deposit's derived event must have been relayed: an
		// empty outbox alone is also what the start looks like.
		if s, err := js.Stream(ctx, own); err != nil {
			return err
		} else if info, err := s.Info(ctx); err != nil {
			return err
		} else if info.State.Msgs == 0 {
			return fmt.Errorf("no derived event in %s yet", own)
		}
		if err := outboxEmpty(ctx, pool); err != nil {
			return err
		}
		kv, err := js.KeyValue(ctx, contract.EmitterLeaseBucket)
		if err != nil {
			return err
		}
		e, err := kv.Get(ctx, "emitter")
		if err != nil {
			return err
		}
		for name := range emitters {
			if strings.Contains(string(e.Value()), `"`+name+`"`) {
				active = name
				return nil
			}
		}
		return fmt.Errorf("lease holder %s", e.Value())
	})
	base := streamMsgCount(t, js, own)
	if err := emitters[active].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	<-emitters[active].done
	walletDeposits(t, pool, "w-1", 1, 100)
	devtest.Eventually(t, 5*time.Second, func() error {
		if n := streamMsgCount(t, js, own); n <= base {
			return fmt.Errorf("%d derived events, waiting for more than %d", n, base)
		}
		return nil
	})
	if took := time.Since(stopped); took > 5*time.Second {
		t.Errorf("the standby emitter relayed %v after the active one's SIGTERM; the lease TTL is 10s", took)
	}
}

// TestSIGTERMWhileStartingExitsZero: a feeder stopped while it still
// starts (here waiting for the event store's migration lock, which another
// migrator holds) stops with status 0: a stop, not a failure.
func TestSIGTERMWhileStartingExitsZero(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)                 //nolint:errcheck
	const migrationLock = 0x6a657470726f6a // eventstore's advisory lock
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(migrationLock)); err != nil {
		t.Fatal(err)
	}
	f := startFeeder(t, "feeder", feederEnv(dbURL, ns.URL(), "f"))
	devtest.Eventually(t, 30*time.Second, func() error {
		var waiting int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%pg_advisory_xact_lock%'`).Scan(&waiting); err != nil {
			return err
		}
		if waiting == 0 {
			return errors.New("the feeder does not wait for the migration lock yet")
		}
		return nil
	})
	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the feeder did not stop within 10s of SIGTERM")
	}
	if code := f.cmd.ProcessState.ExitCode(); code != 0 || !f.logged("feeder stopped while starting") {
		t.Errorf("SIGTERM while starting: exit %d, want 0 and \"feeder stopped while starting\"\n%s", code, tail(f.stderr.String(), 5))
	}
}
