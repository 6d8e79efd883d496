package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/derived"
	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projector"
)

// GoalEmitterRatio is the emitter's goal: draining the outbox at least at
// this fraction of a raw async publish of the same messages (issue 12).
const GoalEmitterRatio = 0.8

// emitterProjection is the projection whose outbox rows the benchmark
// relays; its stream is PROJECT_BENCH_EMIT.
const emitterProjection = "bench_emit"

// EmitterOptions configure the emitter benchmark.
type EmitterOptions struct {
	Rows       int // outbox rows of each round
	Partitions int // partitions the rows are spread over, interleaved
	Rounds     int // rounds of raw publish then emitter
	BatchSize  int // the emitter's EMITTER_BATCH_SIZE (0: its default)
	Payload    int // bytes of each derived event's payload, about
	// CPUProfileDir, when set, receives a CPU profile of each run
	// (raw-N.pprof, emitter-N.pprof).
	CPUProfileDir string
	Logger        *slog.Logger
	Progress      io.Writer
}

func (o EmitterOptions) withDefaults() EmitterOptions {
	if o.Rows == 0 {
		o.Rows = 200_000
	}
	if o.Partitions == 0 {
		o.Partitions = 20_000
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.Payload == 0 {
		o.Payload = 100
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

// EmitterResult is what the emitter benchmark measured.
type EmitterResult struct {
	Date       time.Time
	Rows       int
	Partitions int
	BatchSize  int
	Raw        []Run // raw async publish of the outbox's messages
	Emitter    []Run // the emitter draining the outbox
}

// Ratio is the best emitter rate over the best raw rate.
func (r EmitterResult) Ratio() float64 { return ratio(best(r.Emitter).Rate(), best(r.Raw).Rate()) }

// MedianRatio is the median emitter rate over the median raw rate.
func (r EmitterResult) MedianRatio() float64 { return ratio(median(r.Emitter), median(r.Raw)) }

// Summary is the result as the final block of the benchmark's output.
func (r EmitterResult) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "emitter: %d outbox rows over %d partitions  raw async publish %.0f ev/s  emitter %.0f ev/s  ratio %.2f (goal ≥ %.2f) %s\n",
		r.Rows, r.Partitions, best(r.Raw).Rate(), best(r.Emitter).Rate(), r.Ratio(), GoalEmitterRatio, verdict(r.Ratio() >= GoalEmitterRatio))
	fmt.Fprintf(&b, "  best of %d runs each; medians: raw %.0f ev/s  emitter %.0f ev/s  ratio %.2f\n",
		len(r.Raw), median(r.Raw), median(r.Emitter), r.MedianRatio())
	fmt.Fprintf(&b, "  emitter batch size %d; NATS its own process (nats-server, default settings); PostgreSQL fsync on, default settings; GOMAXPROCS %d\n",
		r.BatchSize, runtime.GOMAXPROCS(0))
	return b.String()
}

// Markdown is the result as a table for docs/benchmarks.md.
func (r EmitterResult) Markdown(command string) string {
	var b strings.Builder
	fmt.Fprintln(&b, "| Date | Command | Rows / partitions | Raw async publish | Emitter | Ratio (goal ≥ 0.8) | Median ratio |")
	fmt.Fprintln(&b, "|---|---|---:|---:|---:|---:|---:|")
	fmt.Fprintf(&b, "| %s | `%s` | %d / %d | %.0f ev/s | %.0f ev/s | %.2f | %.2f |\n",
		r.Date.Format(time.DateOnly), command, r.Rows, r.Partitions, best(r.Raw).Rate(), best(r.Emitter).Rate(), r.Ratio(), r.MedianRatio())
	fmt.Fprintln(&b)
	fmt.Fprintf(&b, "Runs (ev/s), raw: %s; emitter: %s.\n", rates(r.Raw), rates(r.Emitter))
	return b.String()
}

// RunEmitterCommand is `go run ./internal/cmd/bench emitter`: it parses
// args, starts a durable PostgreSQL cluster with default settings and a
// nats-server process, runs the benchmark and prints its report.
func RunEmitterCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("emitter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o EmitterOptions
	fs.IntVar(&o.Rows, "rows", 200_000, "outbox rows relayed in each round")
	fs.IntVar(&o.Partitions, "partitions", 20_000, "partitions the rows are spread over")
	fs.IntVar(&o.Rounds, "rounds", 3, "rounds of raw publish then emitter")
	fs.IntVar(&o.BatchSize, "batch", 0, "the emitter's batch size (0: EMITTER_BATCH_SIZE's default)")
	fs.IntVar(&o.Payload, "payload", 100, "payload bytes per derived event, about")
	fs.StringVar(&o.CPUProfileDir, "cpuprofile", "", "directory for a CPU profile of each run (raw-N.pprof, emitter-N.pprof)")
	markdown := fs.Bool("markdown", false, "also print a markdown table for docs/benchmarks.md")
	verbose := fs.Bool("v", false, "show the emitter's info logs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if o.CPUProfileDir != "" {
		if err := os.MkdirAll(o.CPUProfileDir, 0o755); err != nil {
			return err
		}
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	o.Logger, o.Progress = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})), stdout
	fmt.Fprintln(stdout, "starting throwaway PostgreSQL (fsync on, default settings) and a nats-server process (default settings) on loopback")
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{Durable: true})
	if err != nil {
		return err
	}
	defer pg.Close()
	dbURL, err := pg.CreateDatabase(ctx, "bench")
	if err != nil {
		return err
	}
	ns, err := StartNATSProcess(ctx)
	if err != nil {
		return err
	}
	defer ns.Close()
	res, err := Emitter(ctx, Target{DatabaseURL: dbURL, NATSURL: ns.URL(), NATSProcess: true, NATSPID: ns.PID(), PostgresPID: pg.PID()}, o)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, res.Summary())
	if *markdown {
		fmt.Fprintln(stdout)
		fmt.Fprint(stdout, res.Markdown(strings.Join(append([]string{"go run ./internal/cmd/bench emitter"}, args...), " ")))
	}
	return nil
}

// Emitter runs the emitter benchmark against t: each round fills the
// outbox with the same rows (not timed), publishes their messages raw —
// the same subjects, headers and Nats-Msg-Id, asynchronously with up to
// 4000 acknowledgements pending — into a fresh projection stream, then
// lets an emitter drain the outbox into a fresh stream of the same
// settings. The emitter's clock runs from its start until the stream holds
// every event and the outbox is empty.
func Emitter(ctx context.Context, t Target, opts EmitterOptions) (EmitterResult, error) {
	o := opts.withDefaults()
	batch := o.BatchSize
	if batch == 0 {
		batch = emitter.Config{}.Defaults().BatchSize // EMITTER_BATCH_SIZE's default
	}
	res := EmitterResult{Date: time.Now(), Rows: o.Rows, Partitions: o.Partitions, BatchSize: batch}
	pool, err := pgxpool.New(ctx, t.DatabaseURL)
	if err != nil {
		return res, fmt.Errorf("bench: postgres pool: %w", err)
	}
	defer pool.Close()
	nc, err := nats.Connect(t.NATSURL, nats.Name("jetproj-bench-admin"))
	if err != nil {
		return res, fmt.Errorf("bench: nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return res, err
	}
	if err := projector.NewPGStore(pool, emitterProjection).Init(ctx); err != nil {
		return res, err
	}
	for round := 1; round <= o.Rounds; round++ {
		if err := fillEmitterOutbox(ctx, pool, o); err != nil {
			return res, err
		}
		msgs, err := outboxMsgs(ctx, pool)
		if err != nil {
			return res, err
		}
		run, err := profiled(o.CPUProfileDir, fmt.Sprintf("raw-%d.pprof", round), cpuMeasured(t, func() (Run, error) { return rawEmitterPublish(ctx, t, js, msgs) }))
		if err != nil {
			return res, fmt.Errorf("round %d raw publish: %w", round, err)
		}
		msgs = nil
		res.Raw = append(res.Raw, run)
		fmt.Fprintf(o.Progress, "round %d/%d  raw publish  %s\n", round, o.Rounds, runLine(run))

		run, err = profiled(o.CPUProfileDir, fmt.Sprintf("emitter-%d.pprof", round), cpuMeasured(t, func() (Run, error) { return emitterDrain(ctx, t, js, pool, o) }))
		if err != nil {
			return res, fmt.Errorf("round %d emitter: %w", round, err)
		}
		res.Emitter = append(res.Emitter, run)
		fmt.Fprintf(o.Progress, "round %d/%d  emitter      %s\n", round, o.Rounds, runLine(run))
	}
	return res, nil
}

// fillEmitterOutbox empties the outbox and writes o.Rows rows, partitions
// interleaved as a projector's batches leave them, then lets PostgreSQL
// vacuum and analyse the table as autovacuum would.
func fillEmitterOutbox(ctx context.Context, pool *pgxpool.Pool, o EmitterOptions) error {
	if _, err := pool.Exec(ctx, `TRUNCATE jetproj.outbox`); err != nil {
		return fmt.Errorf("bench: empty outbox: %w", err)
	}
	pad := strings.Repeat("x", max(o.Payload-50, 0))
	prefix := contract.ProjectionPrefix + "." + emitterProjection + ".wallet.w"
	_, err := pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, generation, emit_seq, event_type, payload, source_seq, source_position)
SELECT $1, 'wallet/w' || p, $2 || p, $1 || ':0:wallet/w' || p || ':' || s, 0, s, 'WalletBalanceWasChanged',
       jsonb_build_object('walletId', 'wallet/w' || p, 'balance', i * 7, 'note', $5::text), i, i
  FROM generate_series(0, $3::int - 1) AS i, LATERAL (SELECT i % $4::int AS p, i / $4::int + 1 AS s) AS k
 ORDER BY i`, emitterProjection, prefix, o.Rows, o.Partitions, pad)
	if err != nil {
		return fmt.Errorf("bench: fill outbox: %w", err)
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE jetproj.outbox`); err != nil {
		return fmt.Errorf("bench: vacuum outbox: %w", err)
	}
	return nil
}

// outboxMsgs reads the outbox's messages as the emitter publishes them.
func outboxMsgs(ctx context.Context, pool *pgxpool.Pool) ([]*nats.Msg, error) {
	rows, err := pool.Query(ctx, `SELECT projection, partition, subject, generation, emit_seq, event_type, payload::text, source_seq, source_position
  FROM jetproj.outbox ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*nats.Msg
	for rows.Next() {
		var e derived.Event
		var seq, sseq int64
		var payload string
		if err := rows.Scan(&e.Projection, &e.Partition, &e.Subject, &e.Generation, &seq, &e.Type, &payload, &sseq, &e.SourcePosition); err != nil {
			return nil, err
		}
		e.Seq, e.SourceSeq, e.Payload = uint64(seq), uint64(sseq), []byte(payload)
		out = append(out, e.Msg(e.Subject))
	}
	return out, rows.Err()
}

// resetEmitterStream deletes and creates the projection's stream, with
// the settings the projector gives it.
func resetEmitterStream(ctx context.Context, js jetstream.JetStream) error {
	if err := deleteStream(ctx, js, contract.ProjectionStream(emitterProjection)); err != nil {
		return err
	}
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: contract.ProjectionStream(emitterProjection), Subjects: []string{contract.ProjectionSubjects(emitterProjection)},
		Storage: jetstream.FileStorage, AllowDirect: true, Duplicates: 2 * time.Minute,
		Description: "jetproj benchmark: emitter",
	})
	return err
}

// rawEmitterPublish publishes msgs asynchronously, up to 4000
// acknowledgements pending, into a fresh stream; the clock runs from the
// first publish to the last acknowledgement.
func rawEmitterPublish(ctx context.Context, t Target, admin jetstream.JetStream, msgs []*nats.Msg) (Run, error) {
	if err := resetEmitterStream(ctx, admin); err != nil {
		return Run{}, err
	}
	nc, err := nats.Connect(t.NATSURL, nats.Name("jetproj-bench-raw"))
	if err != nil {
		return Run{}, err
	}
	defer nc.Close()
	var (
		mu     sync.Mutex
		pubErr error
	)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(rawInFlight), jetstream.WithPublishAsyncTimeout(30*time.Second),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			mu.Lock()
			defer mu.Unlock()
			if pubErr == nil {
				pubErr = fmt.Errorf("bench: raw publish %s: %w", m.Subject, err)
			}
		}))
	if err != nil {
		return Run{}, err
	}
	start := time.Now()
	for _, m := range msgs {
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			return Run{}, fmt.Errorf("bench: raw publish: %w", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return Run{}, ctx.Err()
	}
	run := Run{Events: len(msgs), Elapsed: time.Since(start)}
	mu.Lock()
	err = pubErr
	mu.Unlock()
	if err != nil {
		return run, err
	}
	if got, err := streamMsgs(ctx, admin, contract.ProjectionStream(emitterProjection)); err != nil || got != uint64(len(msgs)) {
		return run, fmt.Errorf("bench: raw stream holds %d messages, want %d (%v)", got, len(msgs), err)
	}
	return run, nil
}

// emitterDrain runs an emitter on its own clients until the stream holds
// every row's event and the outbox is empty.
func emitterDrain(ctx context.Context, t Target, admin jetstream.JetStream, pool *pgxpool.Pool, o EmitterOptions) (Run, error) {
	if err := resetEmitterStream(ctx, admin); err != nil {
		return Run{}, err
	}
	// The lease of the last round's emitter is released at its end; a
	// fresh name keeps rounds apart all the same.
	c, err := connect(ctx, t)
	if err != nil {
		return Run{}, err
	}
	defer c.close()
	e, err := emitter.New(emitter.Config{Name: fmt.Sprintf("bench-%d", time.Now().UnixNano()), BatchSize: o.BatchSize}, c.pool, c.nc, o.Logger, nil)
	if err != nil {
		return Run{}, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- e.Run(rctx) }()
	defer func() {
		cancel()
		<-done
	}()
	stream := contract.ProjectionStream(emitterProjection)
	for {
		got, err := streamMsgs(ctx, admin, stream)
		if err != nil {
			return Run{}, err
		}
		if got > uint64(o.Rows) {
			return Run{}, fmt.Errorf("bench: stream holds %d messages for %d rows", got, o.Rows)
		}
		if got == uint64(o.Rows) {
			var left bool
			if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM jetproj.outbox)`).Scan(&left); err != nil {
				return Run{}, err
			}
			if !left {
				return Run{Events: o.Rows, Elapsed: time.Since(start)}, nil
			}
		}
		select {
		case err := <-done:
			return Run{}, fmt.Errorf("bench: emitter stopped: %w", errors.Join(err, errors.New("before draining the outbox")))
		case <-ctx.Done():
			return Run{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
