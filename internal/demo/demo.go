// Package demo runs the whole jetproj pipeline on the embedded defaults: a
// throwaway PostgreSQL (unless DATABASE_URL is set), an embedded NATS server
// (unless NATS_URL is set), the feeder, the projector with the example
// domain's projections, the emitter, and a writer appending example events,
// while it shows side by side the read models changing and the derived
// events arriving on project.>. `make demo` runs it.
//
// `demo write` (Write) is the writer alone, for the container stack.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/pgpool"
	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// Options configure a demo run.
type Options struct {
	// DatabaseURL of an existing event store; empty starts a throwaway one.
	DatabaseURL string
	// NATS settings; an empty URL starts an embedded server.
	NATS natsconn.Config
	// Duration of the writing phase; 0 writes until ctx is cancelled.
	Duration time.Duration
	// Rate of business actions (one event each) per second.
	Rate int
	// Frame is how often the view is drawn (default 1s).
	Frame time.Duration
	// Redraw clears the screen before each frame (for a terminal).
	Redraw bool
	// Out receives the demo's story; Log the services' logs.
	Out io.Writer
	Log *slog.Logger
	// OpsAddr is where the status page (and /metrics) is served: default
	// 127.0.0.1:8080, a free port when that is taken; "off": none.
	OpsAddr string
}

// Result sums a demo run up.
type Result struct {
	// Written events were appended to PostgreSQL; Fed arrived on EVENTS.
	Written, Fed int
	// Derived events arrived on project.> (the projections' own streams),
	// Linked on completed_orders.>.
	Derived, Linked int
	// Duplicates counts derived events seen twice (same Nats-Msg-Id).
	Duplicates int
}

// linkStreams are the linked streams of the example projections, cleared
// with the rest at the start of a run.
var linkStreams = []string{"completed_orders"}

// Run runs the demo until the writing phase ends and the read models equal
// the fold of every written event, or ctx is cancelled.
func Run(ctx context.Context, o Options) (Result, error) {
	var res Result
	if o.Rate <= 0 {
		o.Rate = 20
	}
	if o.Frame <= 0 {
		o.Frame = time.Second
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
	pool, err := pgpool.Open(ctx, pgpool.Config{URL: dbURL, MaxConns: 20})
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
	if conn.Embedded != nil {
		url := conn.Embedded.URL()
		say("  NATS on %s, store in %s — try: nats --server %s sub 'project.>'", url, conn.Embedded.Dir(), url)
	}

	defs := examples.All(pool)
	say("▸ clearing what an earlier demo run left (events, streams, read models) …")
	if err := cleanSlate(ctx, pool, conn.JS, defs); err != nil {
		return res, err
	}

	// The three services, in this process.
	sctx, stopServices := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	defer func() { stopServices(); wg.Wait() }()
	reg := opsserver.NewRegistry()
	f, err := feeder.New(feeder.Config{Instance: "demo"}, feeder.Deps{Pool: pool, NC: conn.NC, Logger: o.Log.With("service", "feeder"), Registerer: reg})
	if err != nil {
		return res, err
	}
	p, err := projector.New(conn.NC, projector.Options{Replica: "demo", LeaseTTL: 2 * time.Second, Logger: o.Log.With("service", "projector"), Registerer: reg}, defs...)
	if err != nil {
		return res, err
	}
	emCfg := emitter.Config{Name: "emitter", Instance: "demo", LeaseTTL: 2 * time.Second}
	em, err := emitter.New(emCfg, pool, conn.NC, o.Log.With("service", "emitter"), reg)
	if err != nil {
		return res, err
	}
	services := map[string]func(context.Context) error{"feeder": f.Run, "projector": p.Run, "emitter": em.Run}
	if o.OpsAddr != opsserver.Disabled {
		ops, err := statusPage(o, reg, conn.JS, pool, f, p, defs, emCfg, em)
		if err != nil {
			return res, err
		}
		services["status page"] = ops.Run
		say("▸ status page: http://%s/  (lag, throughput, parked partitions, live)", ops.Addr())
	}
	for name, run := range services {
		wg.Go(func() {
			if err := run(sctx); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	say("▸ feeder    eventstore.events → stream EVENTS, subjects events.<aggregate>.<id>")
	say("▸ projector %s", strings.Join(examples.Names(), ", "))
	say("▸ emitter   outbox → project.<name>.> and the linked stream completed_orders")

	v := newView(o)
	if err := v.watch(sctx, conn.NC, conn.JS); err != nil {
		return res, err
	}

	say("▸ writing example events (%d/s%s)\n", o.Rate, forHow(o.Duration))
	written, werr := write(ctx, pool, o, v, errs)
	res.Written = written
	if werr != nil && !errors.Is(werr, context.Canceled) {
		return v.result(res), werr
	}
	if ctx.Err() != nil {
		return v.result(res), nil
	}

	// The tail: wait until the read models equal the fold of every event
	// and the outbox is relayed.
	v.draw(ctx, pool, written, "catching up")
	deadline := time.Now().Add(30 * time.Second)
	var verr error
	for {
		verr = settled(ctx, pool, conn.JS, v, written)
		if verr == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case err := <-errs:
			return v.result(res), err
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	res = v.result(res)
	v.draw(ctx, pool, written, "done")
	if ctx.Err() != nil {
		return res, nil
	}
	if verr != nil {
		return res, fmt.Errorf("demo: the pipeline did not settle within 30s: %w", verr)
	}
	say("\n✔ %d events appended to PostgreSQL, %d on EVENTS, each exactly once.", res.Written, res.Fed)
	say("✔ every read model equals the fold of all events (examplecheck.Verify).")
	say("✔ %d derived events on project.> and %d on completed_orders.>, %d duplicates;", res.Derived, res.Linked, res.Duplicates)
	say("  each wallet's last WalletBalanceWasChanged carries its final balance; one OrderFullyCompleted")
	say("  per completed order, whatever the order its events arrived in (examplecheck.VerifyDerived).")
	stopServices()
	wg.Wait()
	return res, nil
}

// settled tells what still differs between the pipeline's outputs and the
// events written.
func settled(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, v *view, written int) error {
	if fed := v.fedCount(); fed < written {
		return fmt.Errorf("%d of %d events on EVENTS", fed, written)
	}
	if err := examplecheck.Verify(ctx, pool, js); err != nil {
		return err
	}
	var pending int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&pending); err != nil {
		return err
	}
	if pending > 0 {
		return fmt.Errorf("%d derived events still in the outbox", pending)
	}
	if err := examplecheck.VerifyDerived(ctx, pool, js); err != nil {
		return err
	}
	return v.balancesMatch(ctx, pool)
}

// cleanSlate removes what an earlier run left: the events, the streams and
// buckets jetproj created, and the example projections' read models (their
// delete hooks), so that the counts of this run mean something.
func cleanSlate(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, defs []projection.Definer) error {
	if _, err := pool.Exec(ctx, `TRUNCATE eventstore.events, eventstore.dead_letters`); err != nil {
		return err
	}
	for _, d := range defs {
		spec := projectionspec.Of(d)
		del := spec.Hooks().Delete
		if del == nil || spec.Settings().Pool == nil {
			continue
		}
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		if err := del(ctx, tx); err != nil {
			tx.Rollback(ctx) //nolint:errcheck // the hook's error is the one to report
			return fmt.Errorf("demo: delete hook of %s: %w", d.Def().Name(), err)
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
	}
	if _, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS jetproj CASCADE`); err != nil {
		return err
	}
	names := js.StreamNames(ctx)
	var doomed []string
	for n := range names.Name() {
		if n == contract.EventsStream || strings.HasPrefix(n, contract.KVStream(contract.BucketPrefix)) || strings.HasPrefix(n, contract.ProjectionStreamPrefix) || contains(linkStreams, n) {
			doomed = append(doomed, n)
		}
	}
	if err := names.Err(); err != nil {
		return err
	}
	for _, n := range doomed {
		if err := js.DeleteStream(ctx, n); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return err
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func forHow(d time.Duration) string {
	if d == 0 {
		return ", Ctrl-C to stop"
	}
	return " for " + d.String()
}

func write(ctx context.Context, pool *pgxpool.Pool, o Options, v *view, errs <-chan error) (int, error) {
	w := NewWriter(pool, uint64(time.Now().UnixNano()), "")
	tick := time.NewTicker(time.Second / time.Duration(o.Rate))
	defer tick.Stop()
	frame := time.NewTicker(o.Frame)
	defer frame.Stop()
	var end <-chan time.Time
	if o.Duration > 0 {
		end = time.After(o.Duration)
	}
	written := 0
	for {
		select {
		case <-ctx.Done():
			return written, ctx.Err()
		case err := <-errs:
			return written, err
		case <-end:
			return written, nil
		case <-frame.C:
			v.draw(ctx, pool, written, "writing")
		case <-tick.C:
			n, err := w.Step(ctx)
			written += n
			if err != nil {
				return written, err
			}
		}
	}
}

// watchStream counts the messages of a stream with an ordered consumer.
func watchStream(ctx context.Context, js jetstream.JetStream, name string, onMsg func(jetstream.Msg)) error {
	var s jetstream.Stream
	var err error
	for s == nil {
		if s, err = js.Stream(ctx, name); errors.Is(err, jetstream.ErrStreamNotFound) {
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
	cc, err := c.Consume(onMsg)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, cc.Stop)
	return nil
}

// subscribe delivers the messages published on subject to fn (core NATS,
// the way `nats sub` does).
func subscribe(ctx context.Context, nc *nats.Conn, subject string, fn func(*nats.Msg)) error {
	sub, err := nc.Subscribe(subject, fn)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, func() { _ = sub.Unsubscribe() })
	return nil
}
