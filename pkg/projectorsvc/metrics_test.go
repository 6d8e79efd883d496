package projectorsvc_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

// metricLine returns the value of the sample name{projection="p"} on the
// service's /metrics, or an error naming what is there instead.
func metric(addr, name, proj string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	prefix := name + `{projection="` + proj + `"} `
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no %s%s", prefix, "…")
}

// wantMetric waits until the sample equals want.
func wantMetric(t *testing.T, addr, name, proj string, want float64) {
	t.Helper()
	devtest.Eventually(t, 30*time.Second, func() error {
		got, err := metric(addr, name, proj)
		if err != nil || got != want {
			return fmt.Errorf("%s{projection=%q} = %v (%v), want %v", name, proj, got, err, want)
		}
		return nil
	})
}

// The lag, parked and partitions gauges follow the projections' real
// state: a read model that cannot be written makes its projection lag by
// the events appended meanwhile, and catch up after; a parked partition is
// counted until it is retried.
func TestStatusGauges(t *testing.T) {
	// Restored by a cleanup registered first, so it runs last: after the
	// projector started below, which reads the intervals, has stopped.
	t.Cleanup(projectorsvc.SetMetricsIntervals(50*time.Millisecond, 100*time.Millisecond))
	b := setup(t)
	port, err := devenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	b.env["OPS_ADDR"] = addr
	var fixed atomic.Bool
	defs := func(pool *pgxpool.Pool) []projection.Definer {
		return []projection.Definer{examples.WalletBalance(pool), auditProjection(&fixed)}
	}
	b.defs = defs
	b.wallets(t, 5, 100)
	b.append(t, "w-3", "MoneyWasAddedToWallet", map[string]int64{"amount": 13})
	b.runProjector(t, defs)

	wantMetric(t, addr, "jetproj_projector_partitions", "wallet_balance", 5)
	wantMetric(t, addr, "jetproj_projector_partitions", "wallet_audit", 5)
	wantMetric(t, addr, "jetproj_projector_partitions_parked", "wallet_audit", 1)
	wantMetric(t, addr, "jetproj_projector_partitions_parked", "wallet_balance", 0)
	wantMetric(t, addr, "jetproj_projector_lag", "wallet_balance", 0)
	wantMetric(t, addr, "jetproj_projector_lag", "wallet_audit", 0)

	// wallet_balance cannot write its table: 3 events behind.
	ctx := context.Background()
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, "LOCK TABLE wallet_balance IN SHARE MODE"); err != nil {
		t.Fatal(err)
	}
	b.wallets(t, 3, 7)
	wantMetric(t, addr, "jetproj_projector_lag", "wallet_balance", 3)
	wantMetric(t, addr, "jetproj_projector_lag", "wallet_audit", 0)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wantMetric(t, addr, "jetproj_projector_lag", "wallet_balance", 0)

	fixed.Store(true)
	if r := call(ctx, b.env, defs, "retry", "wallet_audit", "wallet/w-3"); r.code != 0 {
		t.Fatalf("retry: %v", r)
	}
	wantMetric(t, addr, "jetproj_projector_partitions_parked", "wallet_audit", 0)
}
