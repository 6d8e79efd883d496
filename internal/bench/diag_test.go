//go:build diag

package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

func TestDiagPlans(t *testing.T) {
	ctx := context.Background()
	url := devtest.Postgres(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	head, err := loadEvents(ctx, pool, 500000, 50000, 1)
	if err != nil {
		t.Fatal(err)
	}
	// a few live appends
	for i := range 5 {
		if _, err := eventstore.Append(ctx, pool, "wallet", fmt.Sprint("x", i), 0, eventstore.NewEvent{Type: "WalletOpened"}); err != nil {
			t.Fatal(err)
		}
	}
	var tx, ltx uint64
	if err := pool.QueryRow(ctx, "SELECT transaction_id::text::bigint FROM eventstore.events WHERE position=$1", head).Scan(&tx); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, "SELECT transaction_id::text::bigint FROM eventstore.events WHERE position=$1", head+5).Scan(&ltx); err != nil {
		t.Fatal(err)
	}
	explain := func(name, sql string, args ...any) {
		for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
			conn, err := pgx.Connect(ctx, url+"&default_query_exec_mode=simple_protocol")
			if err != nil {
				t.Fatal(err)
			}
			conn.Exec(ctx, "SET plan_cache_mode = "+mode)
			if _, err := conn.Exec(ctx, "PREPARE q AS "+sql); err != nil {
				fmt.Println("prepare:", err)
			}
			rows, err := conn.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) EXECUTE q("+fmt.Sprint(args...)+")")
			if err != nil {
				t.Fatal(err)
			}
			fmt.Println("==", name, mode)
			for rows.Next() {
				var s string
				rows.Scan(&s)
				fmt.Println(s)
			}
			rows.Close()
			fmt.Println("err:", rows.Err())
			conn.Close(ctx)
		}
	}
	explain("read committed", `SELECT position FROM eventstore.events
WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  AND (transaction_id, position) > ($1::xid8, $2::bigint)
ORDER BY transaction_id, position
LIMIT $3`, fmt.Sprintf("'%d', %d, 1000", tx, head))
	explain("pending limit", `SELECT 1 FROM eventstore.events
WHERE (transaction_id, position) > ($1::xid8, $2::bigint) ORDER BY transaction_id, position LIMIT 1`, fmt.Sprintf("'%d', %d", ltx, head+5))
	explain("pending order by", `SELECT EXISTS (SELECT 1 FROM eventstore.events
WHERE (transaction_id, position) > ($1::xid8, $2::bigint) ORDER BY transaction_id, position LIMIT 1)`, fmt.Sprintf("'%d', %d", ltx, head+5))
	explain("pending", `SELECT EXISTS (SELECT 1 FROM eventstore.events
WHERE (transaction_id, position) > ($1::xid8, $2::bigint))`, fmt.Sprintf("'%d', %d", ltx, head+5))
}

func TestDiagCustomPlan(t *testing.T) {
	ctx := context.Background()
	url := devtest.Postgres(t) + "&plan_cache_mode=force_custom_plan"
	n := devtest.NATS(t)
	res, err := Feeder(ctx, Target{DatabaseURL: url, NATSURL: n.URL(), NATSNoSync: true}, FeederOptions{Rounds: 1, Progress: os.Stdout})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Print(res.Summary())
}

func TestDiagTimeline(t *testing.T) {
	ctx := context.Background()
	url := devtest.Postgres(t)
	if os.Getenv("CUSTOM") != "" {
		url += "&plan_cache_mode=force_custom_plan"
	}
	n := devtest.NATS(t)
	res, err := Feeder(ctx, Target{DatabaseURL: url, NATSURL: n.URL(), NATSNoSync: true}, FeederOptions{Events: 20000, Rounds: 1, Progress: os.Stdout})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Print(res.Summary())
	// per 250ms bucket: count, p50, max
	buckets := map[int][]time.Duration{}
	for _, s := range res.Live.samples {
		b := int(s.at / (250 * time.Millisecond))
		buckets[b] = append(buckets[b], s.lat)
	}
	for b := 0; b < len(buckets); b++ {
		l := buckets[b]
		slices.Sort(l)
		fmt.Printf("%5.2fs n=%4d p50=%6.1fms p99=%6.1fms max=%6.1fms\n", float64(b)*0.25, len(l), ms1(percentile(l, 50)), ms1(percentile(l, 99)), ms1(l[len(l)-1]))
	}
}

func ms1(d time.Duration) float64 { return float64(d) / 1e6 }
