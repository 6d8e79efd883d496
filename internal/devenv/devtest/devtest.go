// Package devtest gives tests their own real servers: one throwaway
// PostgreSQL cluster per test binary (each test gets a fresh database in it)
// and one embedded NATS server per test. Nothing here talks to a server that
// happens to run on the machine.
//
// A package using Postgres must call Main from its TestMain so that the
// cluster is stopped when the tests end:
//
//	func TestMain(m *testing.M) { devtest.Main(m) }
package devtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/jetproj/jetproj/internal/devenv"
)

var (
	pgOnce sync.Once
	pg     *devenv.Postgres
	pgErr  error
	dbSeq  atomic.Int64
)

// Main runs the tests, checks for leaked goroutines, and stops the shared
// PostgreSQL cluster if one was started.
func Main(m *testing.M) {
	code := m.Run()
	if pg != nil {
		_ = pg.Close()
	}
	if code == 0 {
		if err := goleak.Find(LeakOptions()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// LeakOptions ignore goroutines that libraries keep on purpose.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).logRejectedTLSConns"),
	}
}

// Cluster returns the shared PostgreSQL cluster of this test binary, starting
// it on first use.
func Cluster(t testing.TB) *devenv.Postgres {
	t.Helper()
	pgOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		pg, pgErr = devenv.StartPostgres(ctx, devenv.PostgresOptions{})
	})
	if pgErr != nil {
		t.Fatalf("start postgres: %v", pgErr)
	}
	return pg
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// Postgres creates a fresh database for this test and returns its URL.
func Postgres(t testing.TB) string {
	t.Helper()
	c := Cluster(t)
	name := nonIdent.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	name = fmt.Sprintf("t%d_%s", dbSeq.Add(1), name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, err := c.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatalf("create database: %v", err)
	}
	return url
}

// Pool is a connection pool on a fresh database of this test's own
// (Postgres), closed when the test ends.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), Postgres(t))
	if err != nil {
		t.Fatalf("postgres pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// LogBuffer is a log destination a test reads while what it tests writes
// to it from other goroutines.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// NATS starts an embedded NATS server with JetStream for this test, in its own
// temporary directory; it is shut down when the test ends.
func NATS(t testing.TB, opts ...func(*devenv.NATSOptions)) *devenv.NATS {
	t.Helper()
	o := devenv.NATSOptions{Dir: t.TempDir(), NoSync: true}
	for _, f := range opts {
		f(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := devenv.StartNATS(ctx, o)
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(n.Shutdown)
	return n
}

// Connect connects to the server n (an embedded server, a cluster: what
// has a URL) and returns the connection, which reconnects for ever, and a
// JetStream context; both are closed when the test ends.
func Connect(t testing.TB, n interface{ URL() string }) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(n.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// Eventually polls cond until it returns nil or the deadline passes, then
// fails the test with the last error. It waits on a condition, not a time.
func Eventually(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	backoff := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", within, err)
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

// Slow skips t under -short (make test-short): tests that take seconds —
// kills and restarts of servers, clusters, thousands of events, a
// benchmark — as opposed to the unit tests and quick integration tests
// the short loop keeps. make test runs them all.
func Slow(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("slow: skipped with -short")
	}
}
