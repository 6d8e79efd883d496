// Package demo runs the jetproj pipeline on the embedded defaults: a
// throwaway PostgreSQL (unless DATABASE_URL is set), an embedded NATS server
// (unless NATS_URL is set), the feeder, and a writer appending events of the
// example domain, while it prints the events arriving on events.> as they
// come. `make demo` runs it.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/devenv"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/feeder"
	"github.com/jetproj/jetproj/pkg/natsconn"
	"github.com/jetproj/jetproj/pkg/pgconn"
)

// Options configure a demo run.
type Options struct {
	// DatabaseURL of an existing event store; empty starts a throwaway one.
	DatabaseURL string
	// NATS settings; an empty URL starts an embedded server.
	NATS natsconn.Config
	// Duration of the writing phase; 0 writes until ctx is cancelled.
	Duration time.Duration
	// Rate of business actions per second.
	Rate int
	// Out receives the demo's story; Log the services' logs.
	Out io.Writer
	Log *slog.Logger
}

// Result sums a demo run up.
type Result struct {
	Written, Received int
	Duplicates        int
}

// Run runs the demo until the writing phase ends and every written event has
// arrived, or ctx is cancelled.
func Run(ctx context.Context, o Options) (Result, error) {
	var res Result
	if o.Rate <= 0 {
		o.Rate = 20
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	out := o.Out
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }

	dbURL := o.DatabaseURL
	if dbURL == "" {
		say("▸ starting a throwaway PostgreSQL from the machine's binaries …")
		pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{})
		if err != nil {
			return res, err
		}
		defer pg.Close()
		dbURL = pg.URL("postgres")
		say("  PostgreSQL on 127.0.0.1:%d (removed at exit)", pg.Port())
	}
	pool, err := pgconn.Open(ctx, pgconn.Config{URL: dbURL, MaxConns: 10})
	if err != nil {
		return res, err
	}
	defer pool.Close()
	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		return res, err
	}

	if o.NATS.URL == "" {
		say("▸ starting an embedded NATS server with JetStream …")
	}
	conn, err := natsconn.Connect(ctx, o.NATS, o.Log)
	if errors.Is(err, natsconn.ErrEmbeddedPortInUse) {
		say("  port %d is taken; using a free port instead", o.NATS.EmbeddedPort)
		o.NATS.EmbeddedPort = 0
		conn, err = natsconn.Connect(ctx, o.NATS, o.Log)
	}
	if err != nil {
		return res, err
	}
	defer conn.Close()
	url := o.NATS.Redacted().URL
	if conn.Embedded != nil {
		url = conn.Embedded.URL()
		say("  NATS on %s, store in %s — try: nats --server %s sub 'events.>'", url, conn.Embedded.Dir(), url)
	}

	// A demo run starts from a clean slate so that its counts mean something.
	if _, err := pool.Exec(ctx, `TRUNCATE eventstore.events, eventstore.dead_letters`); err != nil {
		return res, err
	}
	for _, s := range []string{"EVENTS", "KV_jetproj_feeder_state", "KV_jetproj_feeder_leases"} {
		if err := conn.JS.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return res, err
		}
	}

	fctx, stopFeeder := context.WithCancel(ctx)
	f, err := feeder.New(feeder.Config{}, feeder.Deps{Pool: pool, NC: conn.NC, Logger: o.Log})
	if err != nil {
		stopFeeder()
		return res, err
	}
	var wg sync.WaitGroup
	var feedErr error
	wg.Go(func() { feedErr = f.Run(fctx) })
	defer func() { stopFeeder(); wg.Wait() }()
	say("▸ feeder running: eventstore.events → stream EVENTS on events.<aggregate>.<id>")

	received := make(chan eventmsg.Event, 1024)
	if err := watch(fctx, conn.JS, received); err != nil {
		return res, err
	}

	say("▸ writing example events (%d actions/s%s) and showing them as they arrive:\n", o.Rate, forHow(o.Duration))
	written, werr := write(ctx, pool, o, received, out, &res)
	res.Written = written
	if werr != nil && !errors.Is(werr, context.Canceled) {
		return res, werr
	}
	// Let the tail arrive.
	deadline := time.After(10 * time.Second)
	for res.Received < res.Written {
		select {
		case e := <-received:
			show(out, e)
			res.Received++
		case <-deadline:
			return res, fmt.Errorf("demo: %d of %d events arrived within 10s", res.Received, res.Written)
		case <-ctx.Done():
			return res, nil
		}
	}
	say("\n✔ %d events written to PostgreSQL, %d arrived on events.> — each exactly once.", res.Written, res.Received)
	stopFeeder()
	wg.Wait()
	return res, feedErr
}

func forHow(d time.Duration) string {
	if d == 0 {
		return ", Ctrl-C to stop"
	}
	return " for " + d.String()
}

// watch delivers every message of EVENTS, from the start, to ch.
func watch(ctx context.Context, js jetstream.JetStream, ch chan<- eventmsg.Event) error {
	var s jetstream.Stream
	var err error
	for s == nil {
		if s, err = js.Stream(ctx, "EVENTS"); errors.Is(err, jetstream.ErrStreamNotFound) {
			s = nil
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			continue
		} else if err != nil {
			return err
		}
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return err
	}
	cc, err := c.Consume(func(m jetstream.Msg) {
		e, err := eventmsg.Parse(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		if err != nil {
			return
		}
		select {
		case ch <- e:
		case <-ctx.Done():
		}
	})
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, cc.Stop)
	return nil
}

func write(ctx context.Context, pool *pgxpool.Pool, o Options, received <-chan eventmsg.Event, out io.Writer, res *Result) (int, error) {
	w := NewWriter(pool, uint64(time.Now().UnixNano()))
	tick := time.NewTicker(time.Second / time.Duration(o.Rate))
	defer tick.Stop()
	var end <-chan time.Time
	if o.Duration > 0 {
		end = time.After(o.Duration)
	}
	written := 0
	seen := map[int64]bool{}
	for {
		select {
		case <-ctx.Done():
			return written, ctx.Err()
		case <-end:
			return written, nil
		case e := <-received:
			if seen[e.Position] {
				res.Duplicates++
			}
			seen[e.Position] = true
			show(out, e)
			res.Received++
		case <-tick.C:
			n, err := w.Step(ctx)
			written += n
			if err != nil {
				return written, err
			}
		}
	}
}

func show(out io.Writer, e eventmsg.Event) {
	fmt.Fprintf(out, "  #%-5d %-30s v%-3d %-28s %s\n", e.Position, "events."+e.AggregateType+"."+e.AggregateID, e.Version, e.Type, e.Payload)
}

// Stdout is where the demo writes its story by default.
var Stdout io.Writer = os.Stdout
