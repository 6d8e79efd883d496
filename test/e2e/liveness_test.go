package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/pkg/examples"
)

// wantProbe waits until addr's path answers code with a body containing
// every one of want.
func wantProbe(t *testing.T, name, addr, path string, code int, want ...string) {
	t.Helper()
	devtest.Eventually(t, 30*time.Second, func() error {
		got, body, err := httpGet(addr, path)
		if err != nil || got != code {
			return fmt.Errorf("%s %s: %d %q %v, want %d", name, path, got, body, err, code)
		}
		for _, w := range want {
			if !strings.Contains(body, w) {
				return fmt.Errorf("%s %s: %q lacks %q", name, path, body, w)
			}
		}
		return nil
	})
}

// lockTable locks table in mode in a transaction and returns the rollback
// that frees it. ACCESS EXCLUSIVE makes readers wait, but gives the
// transaction an id, which holds the event store's horizon (and the feeder)
// back; SHARE makes writers wait without.
func lockTable(t *testing.T, pool *pgxpool.Pool, table, mode string) func() {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier(strings.Split(table, ".")).Sanitize()+" IN "+mode+" MODE"); err != nil {
		_ = tx.Rollback(ctx)
		t.Fatal(err)
	}
	var once bool
	unlock := func() {
		if !once {
			once = true
			_ = tx.Rollback(ctx)
		}
	}
	t.Cleanup(unlock)
	return unlock
}

// TestWedgedLoopFailsLiveness: /healthz reports each service's run loop,
// not only its process. A loop that waits for work is alive however long it
// waits; one stuck in a step (here a statement waiting on a table lock) for
// longer than OPS_WEDGED_AFTER answers 503, and 200 again once the step
// goes on. /readyz of the feeders shows which holds the lease; the standby
// is ready too.
func TestWedgedLoopFailsLiveness(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	ctx := context.Background()
	ops := func(env map[string]string) map[string]string {
		env["OPS_ADDR"], env["OPS_WEDGED_AFTER"] = opsAddr(t), "1s"
		return env
	}
	feeders := map[string]map[string]string{}
	for _, name := range []string{"f1", "f2"} {
		feeders[name] = ops(feederEnv(dbURL, ns.URL(), name))
		startFeeder(t, "feeder "+name, feeders[name])
	}
	penv := ops(pipelineEnv(dbURL, ns.URL(), "p1", examples.WalletBalanceName))
	eenv := ops(emitterEnv(dbURL, ns.URL(), "e1"))
	startProjector(t, "projector", penv)
	startEmitter(t, "emitter", eenv)
	walletDeposits(t, pool, "w-1", 2, 100)
	devtest.Eventually(t, 60*time.Second, func() error { return outboxEmpty(ctx, pool) })

	var active, standby string
	devtest.Eventually(t, 30*time.Second, func() error {
		h, err := leaseHolder(ctx, js)
		if err != nil || feeders[h] == nil {
			return fmt.Errorf("feeder lease holder %q: %v", h, err)
		}
		active = h
		return nil
	})
	standby = map[string]string{"f1": "f2", "f2": "f1"}[active]
	wantProbe(t, "active feeder", feeders[active]["OPS_ADDR"], opsserver.ReadyPath, http.StatusOK, "lease: held")
	wantProbe(t, "standby feeder", feeders[standby]["OPS_ADDR"], opsserver.ReadyPath, http.StatusOK, "lease: standby")
	for name, addr := range map[string]string{"feeder " + active: feeders[active]["OPS_ADDR"], "feeder " + standby: feeders[standby]["OPS_ADDR"],
		"projector": penv["OPS_ADDR"], "emitter": eenv["OPS_ADDR"]} {
		wantProbe(t, name, addr, opsserver.HealthPath, http.StatusOK, "loop: ok", "running: ok")
	}

	// The active feeder's poll waits on the events table: wedged. The
	// standby waits for the lease: alive.
	unlock := lockTable(t, pool, "eventstore.events", "ACCESS EXCLUSIVE")
	wantProbe(t, "active feeder", feeders[active]["OPS_ADDR"], opsserver.HealthPath, http.StatusServiceUnavailable, "loop: wedged: feeding busy for")
	wantProbe(t, "standby feeder", feeders[standby]["OPS_ADDR"], opsserver.HealthPath, http.StatusOK, "loop: ok")
	unlock()
	wantProbe(t, "active feeder", feeders[active]["OPS_ADDR"], opsserver.HealthPath, http.StatusOK, "loop: ok")

	// The projector's batch waits to write its read model's table.
	unlock = lockTable(t, pool, "wallet_balance", "SHARE")
	walletDeposits(t, pool, "w-1", 1, 5)
	wantProbe(t, "projector", penv["OPS_ADDR"], opsserver.HealthPath, http.StatusServiceUnavailable, "loop: wedged: wallet_balance busy for")
	unlock()
	wantProbe(t, "projector", penv["OPS_ADDR"], opsserver.HealthPath, http.StatusOK, "loop: ok")
	devtest.Eventually(t, 30*time.Second, func() error { return examplecheck.Verify(ctx, pool, js, examples.WalletBalanceName) })

	// The emitter's round waits to delete the rows it relayed.
	devtest.Eventually(t, 30*time.Second, func() error { return outboxEmpty(ctx, pool) })
	unlock = lockTable(t, pool, "jetproj.outbox", "SHARE")
	wantProbe(t, "emitter", eenv["OPS_ADDR"], opsserver.HealthPath, http.StatusServiceUnavailable, "loop: wedged: relay round busy for")
	unlock()
	wantProbe(t, "emitter", eenv["OPS_ADDR"], opsserver.HealthPath, http.StatusOK, "loop: ok")
}
