package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/demo"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/pkg/examples"
)

func projectorEnv(dbURL, natsURL, replica string) map[string]string {
	return map[string]string{
		"DATABASE_URL":        dbURL,
		"NATS_URL":            natsURL,
		"PROJECTIONS":         "wallet_balance,ticket_details,ticket_counts",
		"PROJECTOR_REPLICA":   replica,
		"PROJECTOR_LEASE_TTL": "2s",
		"LOG_FORMAT":          "json",
		"OPS_ADDR":            "127.0.0.1:0",
	}
}

// TestProjectorReplicasSurviveSIGKILL is G2 and G3 with real processes: a
// feeder, projector replicas SIGKILLed at random moments, restarted, one
// added and one stopped gracefully, while writers append the example
// domain. The read models equal the reference fold of every event: wallet
// balances are sums, so an event applied twice or skipped shows.
func TestProjectorReplicasSurviveSIGKILL(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	startFeeder(t, "feeder", feederEnv(dbURL, ns.URL(), "f"))

	ctx, stopWriting := context.WithCancel(context.Background())
	written := make(chan int, 1)
	go func() {
		w := demo.NewWriter(pool, testSeed(t), "")
		n := 0
		for ctx.Err() == nil && n < 6000 {
			k, err := w.Step(ctx)
			n += k
			if err != nil && ctx.Err() == nil {
				t.Errorf("writer: %v", err)
				break
			}
		}
		written <- n
	}()
	defer stopWriting()

	rng := rand.New(rand.NewPCG(testSeed(t), 3))
	replicas := map[string]*proc{}
	start := func(name string) {
		replicas[name] = startProc(t, "projector "+name, bins.build(t).projector, projectorEnv(dbURL, ns.URL(), name), "run")
	}
	start("p1")
	start("p2")
	storeCount := func() int {
		var n int
		_ = pool.QueryRow(context.Background(), `SELECT count(*) FROM eventstore.events`).Scan(&n)
		return n
	}
	for round := range 4 {
		target := storeCount() + 500 + rng.IntN(800)
		devtest.Eventually(t, 60*time.Second, func() error {
			if n := storeCount(); n < target {
				return fmt.Errorf("%d events written, waiting for %d", n, target)
			}
			return nil
		})
		victim := []string{"p1", "p2"}[round%2]
		replicas[victim].kill()
		start(victim)
		if round == 1 {
			start("p3")
		}
	}
	// A graceful stop hands the slots over at once.
	if err := replicas["p3"].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopWriting()
	n := <-written
	t.Logf("%d events written", n)
	devtest.Eventually(t, 90*time.Second, func() error {
		return examplecheck.Verify(context.Background(), pool, js, examples.WalletBalanceName, examples.TicketDetailsName, examples.TicketCountsName)
	})
}
