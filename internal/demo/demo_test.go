package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/demo"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/pgpool"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// The demo runs the whole pipeline and settles: read models equal the
// fold, every derived event exactly once, and the story is told.
func TestRunSettles(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n := devtest.NATS(t)
	var out bytes.Buffer
	res, err := demo.Run(ctx, demo.Options{DatabaseURL: devtest.Postgres(t), NATS: natsconn.Config{URL: n.URL()},
		Duration: 3 * time.Second, Rate: 100, Frame: 500 * time.Millisecond, Out: &out, OpsAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	if res.Written < 100 || res.Fed != res.Written {
		t.Errorf("written %d, fed %d: want at least 100, all fed", res.Written, res.Fed)
	}
	if res.Derived == 0 || res.Duplicates != 0 {
		t.Errorf("derived %d with %d duplicates: want some, none twice", res.Derived, res.Duplicates)
	}
	for _, want := range []string{"READ MODELS", "DERIVED EVENTS", "wallet_balance", "project.wallet_balance.wallet.", "every read model equals the fold",
		"status page: http://127.0.0.1:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out.String())
		}
	}
}

// The writer of the container stack appends example events until its
// duration ends, and a second run never collides with the first.
func TestWrite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := devtest.Postgres(t)
	cfg, err := config.Load[demo.WriterConfig](config.WithEnvironment(map[string]string{
		"DATABASE_URL": url, "DEMO_RATE": "200", "DEMO_DURATION": "500ms"}))
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for range 2 {
		n, err := demo.Write(ctx, cfg, nil)
		if err != nil {
			t.Fatalf("write: %v", err)
		}
		if n < 20 {
			t.Fatalf("wrote %d events in 500ms at 200/s", n)
		}
		total += n
	}
	pool, err := pgpool.Open(ctx, pgpool.Config{URL: url, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	head, err := eventstore.Head(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	var count int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM eventstore.events`).Scan(&count); err != nil {
		t.Fatal(err)
	}
	if count != total || head == 0 {
		t.Errorf("store holds %d events (head %d), the writer said %d", count, head, total)
	}
}

func TestWriterConfigErrors(t *testing.T) {
	_, err := config.Load[demo.WriterConfig](config.WithEnvironment(map[string]string{"DEMO_RATE": "0", "DEMO_DURATION": "-1s"}))
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"DATABASE_URL", "DEMO_RATE", "DEMO_DURATION"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}
