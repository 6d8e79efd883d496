package projectorsvc_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/pkg/examples"
)

// TestBackfillIdleSource is backfill on a source that went quiet: every
// event was handled, so backfill must finish.
func TestBackfillIdleSource(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.wallets(t, 30, 100)
	b.runProjector(t, examples.All)
	b.wallets(t, 30, 50)
	devtest.Eventually(t, 20*time.Second, func() error { return examplecheck.Verify(ctx, b.pool, nil, "wallet_balance") })
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r := call(bctx, b.env, examples.All, "backfill", "wallet_balance")
	if r.code != 0 || !strings.Contains(r.stdout, "caught up") {
		rows, _ := b.pool.Query(ctx, `SELECT slot, watermark FROM jetproj.slots WHERE projection = 'wallet_balance' ORDER BY slot`)
		var marks []string
		for rows.Next() {
			var slot, wm int64
			_ = rows.Scan(&slot, &wm)
			marks = append(marks, strconv.FormatInt(slot, 10)+":"+strconv.FormatInt(wm, 10))
		}
		rows.Close()
		t.Fatalf("backfill: %v\nsaved watermarks (slot:seq): %s", r, strings.Join(marks, " "))
	}
}
