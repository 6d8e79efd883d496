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
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/devenv"
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
	res, err := Feeder(ctx, Target{DatabaseURL: url, NATSURL: n.URL(), NATSNoSync: true}, FeederOptions{Events: 20000, Rounds: 1, Progress: os.Stdout, Writers: writersEnv()})
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

func writersEnv() int {
	var w int
	fmt.Sscan(os.Getenv("WRITERS"), &w)
	return w
}

func TestDiagStatements(t *testing.T) {
	ctx := context.Background()
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{Settings: map[string]string{
		"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	url, err := pg.CreateDatabase(ctx, "diag")
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("CUSTOM") != "" {
		url += "&plan_cache_mode=force_custom_plan"
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE EXTENSION pg_stat_statements"); err != nil {
		t.Fatal(err)
	}
	n := devtest.NATS(t)
	o := FeederOptions{Events: 20000, Rounds: 1, Progress: os.Stdout, Writers: writersEnv()}
	o = o.withDefaults()
	tg := Target{DatabaseURL: url, NATSURL: n.URL(), NATSNoSync: true}
	pool, _ := pgxpool.New(ctx, url)
	defer pool.Close()
	eventstore.Migrate(ctx, pool)
	head, err := loadEvents(ctx, pool, o.Events, o.Aggregates, 1)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(devtestConn(t, n.URL()))
	if _, err := feederBackfill(ctx, tg, js, head, o.Events, o.Logger); err != nil {
		t.Fatal(err)
	}
	conn.Exec(ctx, "SELECT pg_stat_statements_reset()")
	lat, err := liveLatency(ctx, tg, head, liveOptions{rate: 2000, duration: 10 * time.Second, writers: o.Writers, seed: 1, log: o.Logger})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("live p50 %v p90 %v p99 %v max %v rate %.0f\n", lat.P50, lat.P90, lat.P99, lat.Max, lat.Achieved)
	rows, err := conn.Query(ctx, `SELECT calls, round(total_exec_time::numeric,1), round(mean_exec_time::numeric,3), round(max_exec_time::numeric,2), rows, left(regexp_replace(query, '\s+', ' ', 'g'), 90) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var calls, nrows int64
		var total, mean, mx float64
		var q string
		if err := rows.Scan(&calls, &total, &mean, &mx, &nrows, &q); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("%7d calls %9.1f ms total %7.3f mean %7.2f max %7d rows  %s\n", calls, total, mean, mx, nrows, q)
	}
}

func devtestConn(t *testing.T, url string) *nats.Conn {
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
