package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
)

// Goals of the pipeline throughput benchmark (DESIGN.md §5): the whole
// pipeline's rate over the feeder's own rate, measured in the same run.
var throughputGoals = map[string]float64{
	examples.WalletBalanceName:   0.5,
	examples.WalletBalanceKVName: 0.8,
}

// ThroughputProjections are the projections the benchmark runs by default.
var ThroughputProjections = []string{examples.WalletBalanceName, examples.WalletBalanceKVName}

// ThroughputOptions configure the pipeline throughput benchmark. Zero
// fields take the defaults given with them.
type ThroughputOptions struct {
	// Events loaded into the store beforehand (default 200000).
	Events int
	// Wallets the events are spread over, interleaved (default Events/10).
	Wallets int
	// Rounds of feeder alone then each pipeline, alternated (default 3).
	Rounds int
	// Projections run as pipelines, each in its own runs (default
	// ThroughputProjections).
	Projections []string
	// Timeout of one run (default 10 minutes).
	Timeout time.Duration
	// Seed of the generated data (default 1).
	Seed uint64
	// Progress receives a line per step and run (nil: discarded).
	Progress io.Writer
	// Logger receives the benchmark's own warnings (nil: discarded).
	Logger *slog.Logger
	// PGStat prints, after each pipeline run, the statements PostgreSQL
	// spent most time on (the server must load pg_stat_statements).
	PGStat bool
}

func (o ThroughputOptions) withDefaults() ThroughputOptions {
	if o.Events == 0 {
		o.Events = 200000
	}
	if o.Wallets == 0 {
		o.Wallets = max(1, o.Events/10)
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if len(o.Projections) == 0 {
		o.Projections = ThroughputProjections
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func (o ThroughputOptions) validate() error {
	var p []string
	if o.Events < 1 {
		p = append(p, fmt.Sprintf("events %d: want at least 1", o.Events))
	}
	if o.Wallets < 1 || o.Wallets > o.Events {
		p = append(p, fmt.Sprintf("wallets %d: want 1..events", o.Wallets))
	}
	if o.Rounds < 1 {
		p = append(p, fmt.Sprintf("rounds %d: want at least 1", o.Rounds))
	}
	for _, name := range o.Projections {
		if _, ok := throughputGoals[name]; !ok {
			p = append(p, fmt.Sprintf("projection %q: want one of %s", name, strings.Join(ThroughputProjections, ", ")))
		}
	}
	if len(p) > 0 {
		return fmt.Errorf("bench: invalid options: %s", strings.Join(p, "; "))
	}
	return nil
}

// PipelineRun is one run of a whole pipeline.
type PipelineRun struct {
	Run
	// FeederDone is when EVENTS held every event, from the feeder's start.
	FeederDone time.Duration
	// Batches the projector committed, the messages in them and the time
	// it spent in them (its metrics).
	Batches       int
	BatchMessages float64
	BatchTime     time.Duration
	// CPU time each process used during the run (feeder, projector,
	// emitter, nats-server when it is a process).
	CPU map[string]time.Duration
	// Derived is the number of derived events on the projection's stream
	// (0 for a projection that emits none).
	Derived int
}

// ThroughputResult is what the pipeline throughput benchmark measured.
type ThroughputResult struct {
	Date    time.Time
	Events  int
	Wallets int
	Target  Target
	// Feeder holds each round's feeder-alone run; Pipelines each
	// projection's runs, in order.
	Feeder    []Run
	Pipelines map[string][]PipelineRun
	// Projections is the order of Pipelines' keys.
	Projections []string
}

// BestFeeder is the fastest feeder-alone run.
func (r ThroughputResult) BestFeeder() Run { return best(r.Feeder) }

// BestPipeline is the fastest run of a projection's pipeline.
func (r ThroughputResult) BestPipeline(name string) Run { return best(pipelineRuns(r.Pipelines[name])) }

// Ratio is the best pipeline rate over the best feeder rate.
func (r ThroughputResult) Ratio(name string) float64 {
	return ratio(r.BestPipeline(name).Rate(), r.BestFeeder().Rate())
}

// MedianRatio is the median pipeline rate over the median feeder rate.
func (r ThroughputResult) MedianRatio(name string) float64 {
	return ratio(median(pipelineRuns(r.Pipelines[name])), median(r.Feeder))
}

// CPUCeiling describes what the CPU time of a projection's fastest run
// allows on this machine: with every process's CPU time (feeder,
// projector, emitter, nats-server, PostgreSQL) spread perfectly over its
// cores, the run cannot take less than their sum over the cores, nor reach
// more than the returned ratio to the best feeder alone. It returns 0 when
// the run's CPU times were not measured.
func (r ThroughputResult) CPUCeiling(name string, cores int) (cpu time.Duration, busy, ceiling float64) {
	run, ok := r.fastest(name)
	if !ok {
		return 0, 0, 0
	}
	for _, d := range run.CPU {
		cpu += d
	}
	if c := r.ceiling(run, cpu, cores); c > 0 {
		return cpu, cpu.Seconds() / run.Elapsed.Seconds(), c
	}
	return 0, 0, 0
}

// ServerCeiling is CPUCeiling counting only what the servers and the
// feeder used in the fastest run (nats-server, PostgreSQL, feeder): the
// ratio the machine would allow if the projector and the emitter cost
// nothing, their servers' work for them staying what it was. 0 when those
// were not measured.
func (r ThroughputResult) ServerCeiling(name string, cores int) float64 {
	run, ok := r.fastest(name)
	if !ok || run.CPU["nats-server"] <= 0 {
		return 0
	}
	return r.ceiling(run, run.CPU["feeder"]+run.CPU["nats-server"]+run.CPU["postgres"], cores)
}

// ceiling is the ratio to the best feeder alone of run's events done in
// cpu spread over cores; 0 when nothing was measured.
func (r ThroughputResult) ceiling(run PipelineRun, cpu time.Duration, cores int) float64 {
	if cpu <= 0 || cores < 1 || run.Elapsed <= 0 {
		return 0
	}
	return ratio(float64(run.Events)/(cpu.Seconds()/float64(cores)), r.BestFeeder().Rate())
}

// fastest is the run of name's pipeline with the highest rate; false when
// it has none.
func (r ThroughputResult) fastest(name string) (PipelineRun, bool) {
	runs := r.Pipelines[name]
	if len(runs) == 0 {
		return PipelineRun{}, false
	}
	return slices.MaxFunc(runs, func(a, b PipelineRun) int { return cmp.Compare(a.Rate(), b.Rate()) }), true
}

func pipelineRuns(p []PipelineRun) []Run {
	out := make([]Run, len(p))
	for i, x := range p {
		out[i] = x.Run
	}
	return out
}

// throughputBench is one benchmark's shared state.
type throughputBench struct {
	o        ThroughputOptions
	t        Target
	pool     *pgxpool.Pool
	js       jetstream.JetStream
	bins     *serviceBinaries
	fold     map[string]examplecheck.WalletRow
	sum      int64
	natsPIDs []int
	http     *http.Client
}

// PipelineThroughput runs the pipeline throughput benchmark against t: it
// loads Events wallet events into the store, then alternates, for Rounds
// rounds, the feeder alone (the limit: the rate until EVENTS holds every
// event) and the whole pipeline of each projection — feeder, projector and
// emitter as processes built from ./services, configured by their
// environment as in production, from an empty stream and empty state — whose
// rate runs until the read model equals the fold of the events, the outbox
// is empty and every derived event is out. After each run it checks the
// results in full: read model = fold, outbox empty, each wallet's last
// derived event carries its final balance, no Nats-Msg-Id twice. A failed
// check is an error. natsPID, when not 0, is the nats-server process whose
// CPU time the runs report (on a cluster, t.NATSPIDs: the sum of the
// nodes'); t.NATSReplicas go to the services as the replicas of their
// streams and buckets.
func PipelineThroughput(ctx context.Context, t Target, natsPID int, opts ThroughputOptions) (ThroughputResult, error) {
	o := opts.withDefaults()
	res := ThroughputResult{Date: time.Now(), Events: o.Events, Wallets: o.Wallets, Target: t,
		Pipelines: map[string][]PipelineRun{}, Projections: o.Projections}
	if err := o.validate(); err != nil {
		return res, err
	}
	out := o.Progress
	b := &throughputBench{o: o, t: t, natsPIDs: t.NATSPIDs, http: &http.Client{Timeout: 5 * time.Second}}
	if natsPID != 0 && len(b.natsPIDs) == 0 {
		b.natsPIDs = []int{natsPID}
	}
	var err error
	if b.pool, err = pgxpool.New(ctx, t.DatabaseURL); err != nil {
		return res, fmt.Errorf("bench: postgres pool: %w", err)
	}
	defer b.pool.Close()
	nc, err := nats.Connect(t.NATSURL, nats.Name("jetproj-bench-admin"))
	if err != nil {
		return res, fmt.Errorf("bench: nats: %w", err)
	}
	defer nc.Close()
	if b.js, err = jetstream.New(nc); err != nil {
		return res, err
	}

	started := time.Now()
	fmt.Fprintln(out, "building ./services/feeder, ./services/projector and ./services/emitter")
	if b.bins, err = buildServices(ctx); err != nil {
		return res, err
	}
	defer b.bins.remove()
	fmt.Fprintf(out, "built in %v\n", time.Since(started).Round(time.Millisecond))

	if _, err := eventstore.Migrate(ctx, b.pool); err != nil {
		return res, err
	}
	started = time.Now()
	head, err := loadWalletEvents(ctx, b.pool, o.Events, o.Wallets, o.Seed)
	if err != nil {
		return res, err
	}
	events, err := examplecheck.ReadAllEvents(ctx, b.pool)
	if err != nil {
		return res, err
	}
	if b.fold, err = examplecheck.FoldWallets(events); err != nil {
		return res, err
	}
	for _, w := range b.fold {
		b.sum += w.Balance
	}
	fmt.Fprintf(out, "loaded %d events over %d wallets with COPY in %v (head position %d)\n",
		len(events), len(b.fold), time.Since(started).Round(time.Millisecond), head)
	if len(events) != o.Events {
		return res, fmt.Errorf("bench: store holds %d events, want %d", len(events), o.Events)
	}

	for round := 1; round <= o.Rounds; round++ {
		run, err := b.feederAlone(ctx)
		if err != nil {
			return res, fmt.Errorf("round %d feeder: %w", round, err)
		}
		res.Feeder = append(res.Feeder, run)
		fmt.Fprintf(out, "round %d/%d  feeder alone        %s\n", round, o.Rounds, runLine(run))
		for _, name := range o.Projections {
			run, err := b.pipeline(ctx, name)
			if err != nil {
				return res, fmt.Errorf("round %d pipeline %s: %w", round, name, err)
			}
			res.Pipelines[name] = append(res.Pipelines[name], run)
			fmt.Fprintf(out, "round %d/%d  %-18s  %s  (%.2f× the feeder; EVENTS full after %.2fs; %d derived events; %d batches of %.0f messages, %.1fs in batches; CPU %s)\n",
				round, o.Rounds, name, runLine(run.Run), ratio(run.Rate(), res.Feeder[len(res.Feeder)-1].Rate()),
				run.FeederDone.Seconds(), run.Derived, run.Batches, run.BatchMessages/max(float64(run.Batches), 1), run.BatchTime.Seconds(), cpuLine(run.CPU))
		}
	}
	return res, nil
}

func cpuLine(cpu map[string]time.Duration) string {
	var parts []string
	for _, name := range []string{"feeder", "projector", "emitter", "nats-server", "postgres"} {
		if d, ok := cpu[name]; ok {
			parts = append(parts, fmt.Sprintf("%s %.1fs", name, d.Seconds()))
		}
	}
	return strings.Join(parts, ", ")
}

// reset removes every stream and KV bucket on the server and everything the
// projector and emitter keep in PostgreSQL, so that the next run starts
// from an empty stream and empty state; then it checkpoints PostgreSQL so
// that no run pays for the previous one's dirty pages.
func (b *throughputBench) reset(ctx context.Context) error {
	names := b.js.StreamNames(ctx)
	var streams []string
	for n := range names.Name() {
		streams = append(streams, n)
	}
	if err := names.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return fmt.Errorf("bench: list streams: %w", err)
	}
	for _, s := range streams {
		if err := deleteStream(ctx, b.js, s); err != nil {
			return err
		}
	}
	for _, stmt := range []string{
		`DROP SCHEMA IF EXISTS jetproj CASCADE`,
		`DROP TABLE IF EXISTS wallet_balance`,
		`CHECKPOINT`,
	} {
		if _, err := b.pool.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("bench: %s: %w", stmt, err)
		}
	}
	return nil
}

// env is the environment every service gets: the servers, JSON logs, and
// the operations endpoint on addr ("off" for none).
func (b *throughputBench) env(addr string, extra ...string) map[string]string {
	env := map[string]string{
		"DATABASE_URL": b.t.DatabaseURL,
		"NATS_URL":     b.t.NATSURL,
		"LOG_FORMAT":   "json",
		"OPS_ADDR":     addr,
	}
	if r := b.t.NATSReplicas; r > 1 {
		// Each service reads only its own.
		for _, k := range []string{"FEEDER_STREAM_REPLICAS", "PROJECTOR_STORE_REPLICAS", "EMITTER_STREAM_REPLICAS"} {
			env[k] = strconv.Itoa(r)
		}
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// feederConfig is the feeder's configuration as the services' environment
// gives it (the stream's replicas).
func (b *throughputBench) feederConfig() feeder.Config {
	return feeder.Config{StreamReplicas: max(b.t.NATSReplicas, 1)}.Defaults()
}

// natsCPU is the CPU time the nats-server processes have used so far, and
// whether there are any.
func (b *throughputBench) natsCPU() (time.Duration, bool) {
	var d time.Duration
	for _, pid := range b.natsPIDs {
		d += processCPU(pid)
	}
	return d, len(b.natsPIDs) > 0
}

// eventsFull reports whether EVENTS holds every event.
func (b *throughputBench) eventsFull(ctx context.Context) (bool, error) {
	// A request of its own deadline: on a cluster a JetStream API reply is
	// now and then lost, and the next poll asks again.
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := streamMsgs(rctx, b.js, feeder.Config{}.Defaults().Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) || (err != nil && rctx.Err() != nil && ctx.Err() == nil) {
		return false, nil
	}
	return n >= uint64(b.o.Events), err
}

// feederAlone runs the feeder process from an empty stream until EVENTS
// holds every event.
func (b *throughputBench) feederAlone(ctx context.Context) (Run, error) {
	if err := b.reset(ctx); err != nil {
		return Run{}, err
	}
	runtime.GC()
	ctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	start := time.Now()
	f, err := startService("feeder", b.bins.feeder, b.env("off"), "run")
	if err != nil {
		return Run{}, err
	}
	defer f.stop()
	if err := poll(ctx, 2*time.Millisecond, func() (bool, error) {
		if err := f.exited(); err != nil {
			return false, err
		}
		return b.eventsFull(ctx)
	}); err != nil {
		return Run{}, fmt.Errorf("%w\n--- feeder ---\n%s", err, f.out.tail(3000))
	}
	run := Run{Events: b.o.Events, Elapsed: time.Since(start)}
	if n, err := streamMsgs(ctx, b.js, feeder.Config{}.Defaults().Stream); err != nil || n != uint64(b.o.Events) {
		return run, fmt.Errorf("bench: EVENTS holds %d messages, want %d (%v)", n, b.o.Events, err)
	}
	return run, nil
}

// poll calls done every interval until it reports true or fails.
func poll(ctx context.Context, interval time.Duration, done func() (bool, error)) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// pipeline runs feeder, projector (PROJECTIONS=name) and emitter as
// processes from an empty stream and empty state. The projector and the
// emitter start first, and the clock starts with the feeder once the
// projector holds every slot.
func (b *throughputBench) pipeline(ctx context.Context, name string) (PipelineRun, error) {
	var run PipelineRun
	if err := b.reset(ctx); err != nil {
		return run, err
	}
	runtime.GC()
	ctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
	defer cancel()
	p, e, metricsURL, err := b.startProjection(ctx, name)
	if p != nil {
		defer p.stop()
	}
	if e != nil {
		defer e.stop()
	}
	if err != nil {
		return run, err
	}

	cpu0 := map[string]time.Duration{"projector": p.cpu(), "emitter": e.cpu()}
	cpu0["postgres"] = serverCPU(b.t.PostgresPID)
	if d, ok := b.natsCPU(); ok {
		cpu0["nats-server"] = d
	}
	start := time.Now()
	f, err := startService("feeder", b.bins.feeder, b.env("off"), "run")
	if err != nil {
		return run, err
	}
	defer f.stop()
	procs := []*service{f, p, e}
	fail := func(err error) (PipelineRun, error) { return run, fmt.Errorf("%w\n%s", err, failureLogs(procs)) }

	var feederDone time.Duration
	handled := false
	// Polled every 20 ms: often enough to add at most that to a run of
	// seconds, rarely enough that the polling (a /metrics scrape, then
	// queries) does not take CPU from what it measures.
	err = poll(ctx, 20*time.Millisecond, func() (bool, error) {
		for _, s := range procs {
			if err := s.exited(); err != nil {
				return false, err
			}
		}
		if feederDone == 0 {
			full, err := b.eventsFull(ctx)
			if err != nil || !full {
				return false, err
			}
			feederDone = time.Since(start)
		}
		if !handled {
			m, err := scrapeMetrics(ctx, b.http, metricsURL, "jetproj_projector_messages_total")
			if err != nil {
				return false, err
			}
			if handled = m["jetproj_projector_messages_total"] >= float64(b.o.Events); !handled {
				return false, nil
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		ok, err := b.caughtUp(rctx, name, metricsURL)
		if err != nil && rctx.Err() != nil && ctx.Err() == nil {
			return false, nil // a lost reply: the next poll asks again
		}
		return ok, err
	})
	run.Run = Run{Events: b.o.Events, Elapsed: time.Since(start)}
	run.FeederDone = feederDone
	run.CPU = map[string]time.Duration{"feeder": f.cpu(), "projector": p.cpu() - cpu0["projector"], "emitter": e.cpu() - cpu0["emitter"]}
	if b.t.PostgresPID != 0 {
		run.CPU["postgres"] = serverCPU(b.t.PostgresPID) - cpu0["postgres"]
	}
	if m, err := scrapeMetrics(ctx, b.http, metricsURL, "jetproj_projector_batch_messages_count", "jetproj_projector_batch_messages_sum",
		"jetproj_projector_batch_seconds_sum"); err == nil {
		run.Batches, run.BatchMessages, run.BatchTime = int(m["jetproj_projector_batch_messages_count"]), m["jetproj_projector_batch_messages_sum"],
			time.Duration(m["jetproj_projector_batch_seconds_sum"]*float64(time.Second))
	}
	if d, ok := b.natsCPU(); ok {
		run.CPU["nats-server"] = d - cpu0["nats-server"]
	}
	if err != nil {
		return fail(fmt.Errorf("bench: pipeline not caught up after %v: %w", time.Since(start).Round(time.Millisecond), err))
	}
	if run.Derived, err = b.check(ctx, name); err != nil {
		return fail(err)
	}
	if b.o.PGStat {
		b.printStatements(ctx)
	}
	return run, nil
}

// startProjection creates EVENTS empty (the projector waits for its
// source stream), starts the projector (PROJECTIONS=name) and the emitter
// and waits until the projector holds every slot. It returns the processes
// started, also on error (the caller stops them), and the projector's
// metrics URL.
func (b *throughputBench) startProjection(ctx context.Context, name string) (p, e *service, metricsURL string, err error) {
	// Created with the feeder's configuration, as a deployment's first
	// feeder start would.
	if _, _, err := feeder.EnsureStream(ctx, b.js, b.feederConfig()); err != nil {
		return nil, nil, "", err
	}
	// Port 0: a port picked by the kernel and logged, free for sure on a
	// machine where others start servers too.
	p, err = startService("projector", b.bins.projector,
		b.env("127.0.0.1:0", "PROJECTIONS", name, "PROJECTOR_REPLICA", "bench"), "run")
	if err != nil {
		return nil, nil, "", err
	}
	e, err = startService("emitter", b.bins.emitter, b.env("off"), "run")
	if err != nil {
		return p, nil, "", err
	}
	slots := float64(projectionSlots(name))
	begin := time.Now()
	err = poll(ctx, 10*time.Millisecond, func() (bool, error) {
		if err := errors.Join(p.exited(), e.exited()); err != nil {
			return false, err
		}
		if metricsURL == "" {
			addr := p.opsAddr()
			if addr == "" {
				return false, nil
			}
			metricsURL = "http://" + addr + "/metrics"
		}
		m, err := scrapeMetrics(ctx, b.http, metricsURL, "jetproj_projector_slots_owned")
		if err != nil {
			return false, nil // not listening yet
		}
		return m["jetproj_projector_slots_owned"] >= slots, nil
	})
	if err != nil {
		return p, e, "", fmt.Errorf("bench: projector did not take its %v slots in %v: %w\n%s", slots, time.Since(begin).Round(time.Millisecond), err, p.out.tail(3000))
	}
	return p, e, metricsURL, nil
}

func projectionSlots(name string) int {
	for _, d := range examples.All(nil) {
		if def := d.Def(); def.Name() == name {
			return projectionspec.Of(def).Settings().Slots
		}
	}
	return 64
}

// caughtUp is the cheap condition polled while the clock runs: for
// wallet_balance the table's row count and balance total equal the fold's
// and the outbox is empty (its rows were committed with the read model, so
// an empty outbox after the last batch means every derived event is out);
// for wallet_balance_kv the documents equal the fold and no partition waits
// with unpublished derived events. check then compares in full.
func (b *throughputBench) caughtUp(ctx context.Context, name, metricsURL string) (bool, error) {
	switch name {
	case examples.WalletBalanceName:
		// The outbox first (an index probe): the table is read only once
		// it is empty.
		var pending bool
		if err := b.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM jetproj.outbox)`).Scan(&pending); err != nil || pending {
			return false, nil // the projector creates the tables
		}
		var rows, sum int64
		err := b.pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(balance), 0) FROM wallet_balance`).Scan(&rows, &sum)
		if err != nil || rows != int64(len(b.fold)) || sum != b.sum {
			return false, nil
		}
		got, err := examplecheck.ReadWallets(ctx, b.pool)
		if err != nil {
			return false, err
		}
		return examplecheck.Diff(got, b.fold) == nil, nil
	default:
		m, err := scrapeMetrics(ctx, b.http, metricsURL, "jetproj_projector_partitions_unpublished")
		if err != nil || m["jetproj_projector_partitions_unpublished"] != 0 {
			return false, err
		}
		docs, err := examplecheck.ReadWalletDocs(ctx, b.js)
		if err != nil {
			return false, err
		}
		return diffDocs(docs, b.fold) == nil, nil
	}
}

// refold makes the fold the one of the events the store holds now, when
// their number changed since it was last computed (or it never was).
func (b *throughputBench) refold(ctx context.Context) error {
	var n int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM eventstore.events`).Scan(&n); err != nil {
		return err
	}
	if b.fold != nil && n == b.o.Events {
		return nil
	}
	events, err := examplecheck.ReadAllEvents(ctx, b.pool)
	if err != nil {
		return err
	}
	fold, err := examplecheck.FoldWallets(events)
	if err != nil {
		return err
	}
	var sum int64
	for _, w := range fold {
		sum += w.Balance
	}
	b.fold, b.sum, b.o.Events = fold, sum, len(events)
	return nil
}

// readModelDiff says how wallet_balance differs from the fold, for the
// error of a run that never caught up ("" when it cannot tell).
func (b *throughputBench) readModelDiff(ctx context.Context) string {
	got, err := examplecheck.ReadWallets(ctx, b.pool)
	if err != nil {
		return ""
	}
	var outbox int
	_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&outbox)
	return fmt.Sprintf("\nread model: %d wallets, fold of %d events: %d wallets, outbox: %d rows; differences: %v", len(got), b.o.Events, len(b.fold), outbox, examplecheck.Diff(got, b.fold))
}

// check compares the results in full once the clock has stopped: read model
// = fold, outbox empty, EVENTS holds every event once, each wallet's last
// derived event carries its final balance and no Nats-Msg-Id appears twice.
// It returns the number of derived events.
func (b *throughputBench) check(ctx context.Context, name string) (int, error) {
	var errs []error
	if n, err := streamMsgs(ctx, b.js, feeder.Config{}.Defaults().Stream); err != nil || n != uint64(b.o.Events) {
		errs = append(errs, fmt.Errorf("EVENTS holds %d messages, want %d (%v)", n, b.o.Events, err))
	}
	switch name {
	case examples.WalletBalanceName:
		got, err := examplecheck.ReadWallets(ctx, b.pool)
		if err == nil {
			err = examplecheck.Diff(got, b.fold)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read model: %w", err))
		}
		var outbox int64
		if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&outbox); err != nil || outbox != 0 {
			errs = append(errs, fmt.Errorf("outbox holds %d rows, want 0 (%v)", outbox, err))
		}
	default:
		got, err := examplecheck.ReadWalletDocs(ctx, b.js)
		if err == nil {
			err = diffDocs(got, b.fold)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read model: %w", err))
		}
	}
	// On a cluster a read may meet a stream whose leader is still being
	// chosen (no responders): read again, a few times.
	derived, err := examplecheck.ReadDerived(ctx, b.js, contract.ProjectionStream(name))
	for try := 0; err != nil && jsretry.Transient(err) && try < 20 && ctx.Err() == nil; try++ {
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
		derived, err = examplecheck.ReadDerived(ctx, b.js, contract.ProjectionStream(name))
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("derived events: %w", err))
	}
	// wallet_balance and wallet_balance_kv emit a WalletBalanceWasChanged
	// per wallet per batch; a projection without a stream of its own emits
	// nothing.
	if name == examples.WalletBalanceName || name == examples.WalletBalanceKVName || len(derived) > 0 {
		if err := checkDerived(derived, b.fold); err != nil {
			errs = append(errs, fmt.Errorf("derived events on %s: %w", contract.ProjectionStream(name), err))
		}
	}
	return len(derived), errors.Join(errs...)
}

// checkDerived checks that every wallet's last WalletBalanceWasChanged
// carries its final balance and that no Nats-Msg-Id appears twice.
func checkDerived(derived []examplecheck.DerivedEvent, fold map[string]examplecheck.WalletRow) error {
	last := map[string]int64{}
	ids := make(map[string]struct{}, len(derived))
	var dups []string
	for _, m := range derived {
		if _, seen := ids[m.MsgID]; seen || m.MsgID == "" {
			dups = append(dups, m.MsgID)
		}
		ids[m.MsgID] = struct{}{}
		if m.Type != examples.TypeWalletBalanceWasChanged {
			continue
		}
		var c examples.WalletBalanceWasChanged
		if err := json.Unmarshal(m.Data, &c); err != nil {
			return fmt.Errorf("%s: %w", m.Subject, err)
		}
		last[c.WalletID] = c.Balance
	}
	var errs []error
	if len(dups) > 0 {
		errs = append(errs, fmt.Errorf("%d messages with a Nats-Msg-Id seen before (or none), e.g. %q", len(dups), dups[:min(3, len(dups))]))
	}
	var wrong []string
	for id, w := range fold {
		if got, ok := last[id]; !ok || got != w.Balance {
			wrong = append(wrong, fmt.Sprintf("%s: last derived balance %d (present %t), want %d", id, got, ok, w.Balance))
		}
	}
	if len(last) != len(fold) {
		errs = append(errs, fmt.Errorf("derived events name %d wallets, want %d", len(last), len(fold)))
	}
	if len(wrong) > 0 {
		slices.Sort(wrong)
		errs = append(errs, fmt.Errorf("%d wallets' last derived event differs from the fold, e.g. %s", len(wrong), strings.Join(wrong[:min(3, len(wrong))], "; ")))
	}
	return errors.Join(errs...)
}

func diffDocs(got map[string]examples.WalletDoc, want map[string]examplecheck.WalletRow) error {
	var bad []string
	for id, w := range want {
		if g, ok := got[id]; !ok || g.Owner != w.Owner || g.Balance != w.Balance {
			bad = append(bad, fmt.Sprintf("%s: got %+v, want %+v", id, g, w))
		}
	}
	return diffResult(len(got), len(want), bad)
}

func diffResult(got, want int, bad []string) error {
	if len(bad) == 0 && got == want {
		return nil
	}
	slices.Sort(bad)
	return fmt.Errorf("%d wallets (want %d), %d differ from the fold, e.g. %s", got, want, len(bad), strings.Join(bad[:min(3, len(bad))], "; "))
}

// loadWalletEvents writes n events of the example domain's wallet over the
// given number of wallets into eventstore.events with COPY, loadChunk rows
// per transaction. Each event goes to a wallet picked at random, so the
// wallets' events interleave: WalletOpened first, then
// MoneyWasAddedToWallet or (about one in four, when the balance allows)
// MoneyWasWithdrawnFromWallet, amounts in integer cents, payloads of about
// 200 bytes. It vacuums, analyses and checkpoints, and returns the highest
// position.
func loadWalletEvents(ctx context.Context, pool *pgxpool.Pool, n, wallets int, seed uint64) (int64, error) {
	d := newDomain(seed)
	ids := make([]string, wallets)
	for i := range ids {
		ids[i] = d.walletID()
	}
	versions := make([]int64, wallets)
	balances := make([]int64, wallets)
	next := 0 // wallets opened so far
	return copyEvents(ctx, pool, n, func() []any {
		// Wallets open in order, every other event until all are open;
		// the other events go to an open wallet at random.
		var a int
		if next < wallets && (next == 0 || d.rng.IntN(2) == 0) {
			a = next
			next++
		} else {
			a = d.rng.IntN(next)
		}
		versions[a]++
		typ, payload := d.walletEvent(versions[a], &balances[a])
		return []any{aggregateWallet, ids[a], versions[a], typ, payload, d.metadata()}
	})
}

// walletEvent returns the type and JSON payload (about 200 bytes) of a
// wallet's event at version, updating its balance.
func (d *domain) walletEvent(version int64, balance *int64) (string, []byte) {
	var typ string
	var p map[string]any
	switch {
	case version == 1:
		typ = examples.TypeWalletOpened
		p = map[string]any{"owner": "owner-" + strconv.Itoa(d.rng.IntN(1_000_000)), "currency": "EUR"}
	case *balance > 0 && d.rng.IntN(4) == 0:
		typ = examples.TypeMoneyWasWithdrawnFromWallet
		amount := 1 + d.rng.Int64N(*balance)
		*balance -= amount
		p = map[string]any{"amount": amount, "currency": "EUR", "reference": "ref-" + strconv.FormatUint(d.rng.Uint64(), 36)}
	default:
		typ = examples.TypeMoneyWasAddedToWallet
		amount := 1 + d.rng.Int64N(100_000)
		*balance += amount
		p = map[string]any{"amount": amount, "currency": "EUR", "reference": "ref-" + strconv.FormatUint(d.rng.Uint64(), 36)}
	}
	target := 180 + d.rng.IntN(41)
	b, _ := json.Marshal(p)
	if fill := target - len(b) - len(`,"note":""`); fill > 0 {
		note := make([]byte, fill)
		for i := range note {
			note[i] = letters[d.rng.IntN(len(letters))]
		}
		p["note"] = string(note)
		b, _ = json.Marshal(p)
	}
	return typ, b
}

// Summary is the result as the final block of the benchmark's output.
func (r ThroughputResult) Summary() string {
	var b strings.Builder
	fd := r.BestFeeder()
	fmt.Fprintf(&b, "pipeline throughput: %d events over %d wallets, loaded beforehand; best of %d runs each\n", r.Events, r.Wallets, len(r.Feeder))
	fmt.Fprintf(&b, "  feeder alone (EVENTS holds every event): %.0f ev/s (median %.0f)\n", fd.Rate(), median(r.Feeder))
	for _, name := range r.Projections {
		goal := throughputGoals[name]
		fmt.Fprintf(&b, "  %-18s feeder + projector + emitter: %.0f ev/s (median %.0f)  ratio %.2f (goal ≥ %.1f) %s  median ratio %.2f\n",
			name, r.BestPipeline(name).Rate(), median(pipelineRuns(r.Pipelines[name])), r.Ratio(name), goal,
			verdict(r.Ratio(name) >= goal), r.MedianRatio(name))
	}
	for _, name := range r.Projections {
		if runs := r.Pipelines[name]; len(runs) > 0 && runs[0].Derived == 0 {
			fmt.Fprintf(&b, "  note: %s emitted no derived events\n", name)
		}
	}
	for _, name := range r.Projections {
		if cpu, busy, c := r.CPUCeiling(name, runtime.NumCPU()); c > 0 {
			fmt.Fprintf(&b, "  %-18s fastest run: %.1f CPU-s of all processes, %.2f of %d cores busy; at this CPU per event the machine allows ratio %.2f at most",
				name, cpu.Seconds(), busy, runtime.NumCPU(), c)
			if sc := r.ServerCeiling(name, runtime.NumCPU()); sc > 0 {
				fmt.Fprintf(&b, ", %.2f with the projector and emitter free", sc)
			}
			fmt.Fprintln(&b)
		}
	}
	fmt.Fprintf(&b, "  checks passed: read model = fold, outbox empty, last derived event per wallet = final balance, no Nats-Msg-Id twice\n")
	fmt.Fprintf(&b, "  %s; GOMAXPROCS %d\n", r.Target.Describe(), runtime.GOMAXPROCS(0))
	return b.String()
}

// Markdown is the result as table rows for docs/benchmarks.md.
func (r ThroughputResult) Markdown(command string) string {
	var b strings.Builder
	head := "| Date | Command | Events | Feeder alone"
	sep := "|---|---|---:|---:"
	row := fmt.Sprintf("| %s | `%s` | %d | %.0f ev/s", r.Date.Format(time.DateOnly), command, r.Events, r.BestFeeder().Rate())
	for _, name := range r.Projections {
		head += fmt.Sprintf(" | %s | Ratio (goal ≥ %.1f)", name, throughputGoals[name])
		sep += "|---:|---:"
		row += fmt.Sprintf(" | %.0f ev/s | %.2f", r.BestPipeline(name).Rate(), r.Ratio(name))
	}
	fmt.Fprintln(&b, head+" |")
	fmt.Fprintln(&b, sep+"|")
	fmt.Fprintln(&b, row+" |")
	fmt.Fprintln(&b)
	fmt.Fprintf(&b, "Runs (ev/s), feeder alone: %s", rates(r.Feeder))
	for _, name := range r.Projections {
		fmt.Fprintf(&b, "; %s: %s", name, rates(pipelineRuns(r.Pipelines[name])))
	}
	fmt.Fprintln(&b, ".")
	fmt.Fprintf(&b, "Medians: feeder %.0f ev/s", median(r.Feeder))
	for _, name := range r.Projections {
		fmt.Fprintf(&b, "; %s %.0f ev/s (ratio %.2f)", name, median(pipelineRuns(r.Pipelines[name])), r.MedianRatio(name))
	}
	fmt.Fprintln(&b, ".")
	return b.String()
}

// printStatements prints the statements PostgreSQL spent most time on since
// the last call, and resets the statistics.
func (b *throughputBench) printStatements(ctx context.Context) {
	out := b.o.Progress
	if _, err := b.pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		fmt.Fprintf(out, "  pg_stat_statements: %v\n", err)
		return
	}
	rows, err := b.pool.Query(ctx, `SELECT calls, rows, total_exec_time, left(regexp_replace(query, '\s+', ' ', 'g'), 110)
FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12`)
	if err != nil {
		fmt.Fprintf(out, "  pg_stat_statements: %v\n", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var calls, n int64
		var ms float64
		var q string
		if rows.Scan(&calls, &n, &ms, &q) == nil {
			fmt.Fprintf(out, "  %8.0f ms %7d calls %8d rows  %s\n", ms, calls, n, q)
		}
	}
	_, _ = b.pool.Exec(ctx, `SELECT pg_stat_statements_reset()`)
}
