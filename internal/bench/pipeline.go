package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
)

// PipelineOptions configure the pipeline benchmark.
type PipelineOptions struct {
	// Rate of appends per second and Duration of the appends.
	Rate     int
	Duration time.Duration
	// Writers append concurrently, each to its own 64 wallets.
	Writers int
	// Rounds of the measurement; the best p99 is reported with all rounds.
	Rounds int
	Seed   uint64
	Logger *slog.Logger
	// Progress receives a line per step.
	Progress io.Writer
	// ReadModelCluster runs the read model and the outbox in a PostgreSQL
	// cluster of their own rather than beside the event store.
	ReadModelCluster bool
}

func (o PipelineOptions) withDefaults() PipelineOptions {
	if o.Rate == 0 {
		o.Rate = 1000
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	if o.Writers == 0 {
		o.Writers = 4
	}
	if o.Rounds == 0 {
		o.Rounds = 1
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

// PipelineRound is one measurement: every appended event's latency to its
// message on EVENTS (the feeder alone: the limit the rest builds on) and to
// the first derived event on project.wallet_balance.> that covers it.
type PipelineRound struct {
	Events  Latency
	Derived Latency
	// Batches the projector committed during the round, their mean
	// duration and mean number of events.
	Batches     int
	BatchMean   time.Duration
	BatchEvents float64
}

type batchCounts struct {
	count     int
	sum, msgs float64
}

// projectorBatches reads the projector's batch histogram and message counter.
func projectorBatches(g prometheus.Gatherer) batchCounts {
	var b batchCounts
	mfs, err := g.Gather()
	if err != nil {
		return b
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "jetproj_projector_batch_seconds":
				b.count += int(m.GetHistogram().GetSampleCount())
				b.sum += m.GetHistogram().GetSampleSum()
			case "jetproj_projector_messages_total":
				b.msgs += m.GetCounter().GetValue()
			}
		}
	}
	return b
}

// Ratio is the derived p99 over the EVENTS p99 of the same appends.
func (r PipelineRound) Ratio() float64 {
	return ratio(float64(r.Derived.P99), float64(r.Events.P99))
}

// PipelineResult is the outcome of Pipeline.
type PipelineResult struct {
	Rounds []PipelineRound
	// Servers describes the servers the benchmark ran against.
	Servers string
}

// Best is the round with the lowest derived p99.
func (r PipelineResult) Best() PipelineRound {
	return slices.MinFunc(r.Rounds, func(a, b PipelineRound) int { return int(a.Derived.P99 - b.Derived.P99) })
}

// pipelineGoal is the p99 goal of append → derived event (DESIGN §5).
const pipelineGoal = 25 * time.Millisecond

// Pipeline runs the whole pipeline in this process — feeder, projector with
// wallet_balance (PostgreSQL read model, one WalletBalanceWasChanged per
// wallet per batch) and emitter — appends paced single events, and measures
// for each one the time from its commit to the first derived event of its
// wallet whose Source-Position covers it, as a core NATS subscriber on
// project.wallet_balance.> sees it; and, in the same run, to its message on
// EVENTS.
func Pipeline(ctx context.Context, t Target, o PipelineOptions) (PipelineResult, error) {
	o = o.withDefaults()
	res := PipelineResult{Servers: t.Describe()}
	c, err := connect(ctx, t)
	if err != nil {
		return res, err
	}
	defer c.close()
	if _, err := eventstore.Migrate(ctx, c.pool); err != nil {
		return res, err
	}
	f, err := startFeeder(ctx, t, o.Logger.With("service", "feeder"))
	if err != nil {
		return res, err
	}
	defer f.stop() //nolint:errcheck // the result is measured by then
	rmPool := c.pool
	if o.ReadModelCluster {
		pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{})
		if err != nil {
			return res, err
		}
		defer pg.Close()
		if rmPool, err = pgxpool.New(ctx, pg.URL("postgres")); err != nil {
			return res, err
		}
		defer rmPool.Close()
	}
	def := examples.WalletBalance(rmPool)
	reg := prometheus.NewRegistry()
	p, err := projector.New(c.nc, projector.Options{Replica: "bench", Logger: o.Logger.With("service", "projector"), Registerer: reg}, def)
	if err != nil {
		return res, err
	}
	em, err := emitter.New(emitter.Config{}, rmPool, c.nc, o.Logger.With("service", "emitter"), nil)
	if err != nil {
		return res, err
	}
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, run := range []func(context.Context) error{p.Run, em.Run} {
		wg.Go(func() {
			if err := run(sctx); err != nil {
				errs <- err
			}
		})
	}
	defer func() { stop(); wg.Wait() }()

	js, err := jetstream.New(c.nc)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(o.Progress, "pipeline: feeder, projector (wallet_balance) and emitter started; warming up\n")
	// Warm up: one event through the whole pipeline.
	warm := o
	warm.Rate, warm.Duration, warm.Seed = 50, time.Second, o.Seed^0x5a5a
	if _, err := measurePipeline(ctx, js, c.nc, t, warm, errs); err != nil {
		return res, fmt.Errorf("bench: pipeline warm-up: %w", err)
	}
	for i := range o.Rounds {
		round := o
		round.Seed = o.Seed + uint64(i)*1000
		before := projectorBatches(reg)
		r, err := measurePipeline(ctx, js, c.nc, t, round, errs)
		if err != nil {
			return res, err
		}
		after := projectorBatches(reg)
		r.Batches = after.count - before.count
		if r.Batches > 0 {
			r.BatchMean = time.Duration((after.sum - before.sum) / float64(r.Batches) * float64(time.Second))
			r.BatchEvents = (after.msgs - before.msgs) / float64(r.Batches)
		}
		fmt.Fprintf(o.Progress, "pipeline round %d: %d events at %.0f/s: EVENTS p50 %s p99 %s · derived p50 %s p99 %s (×%.1f) · %d projector batches, %.1f events and %s each\n",
			i+1, r.Derived.Events, r.Derived.Achieved, ms(r.Events.P50), ms(r.Events.P99), ms(r.Derived.P50), ms(r.Derived.P99), r.Ratio(),
			r.Batches, r.BatchEvents, ms(r.BatchMean))
		res.Rounds = append(res.Rounds, r)
	}
	return res, nil
}

// derivedMark is a derived event of a wallet as the subscriber received it.
type derivedMark struct {
	source int64
	at     time.Time
}

// derivedLog is what a core subscriber to wallet_balance's derived events
// received: for each wallet, the source position each event answers and
// when it came.
type derivedLog struct {
	mu       sync.Mutex
	byWallet map[string][]derivedMark
}

// subscribeDerived starts recording wallet_balance's derived events.
func subscribeDerived(nc *nats.Conn) (*derivedLog, *nats.Subscription, error) {
	l := &derivedLog{byWallet: map[string][]derivedMark{}}
	sub, err := nc.Subscribe(contract.ProjectionSubjects(examples.WalletBalanceName), func(m *nats.Msg) {
		now := time.Now()
		pos, err := strconv.ParseInt(m.Header.Get(contract.HeaderSourcePosition), 10, 64)
		if err != nil {
			return
		}
		wallet := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		l.mu.Lock()
		l.byWallet[wallet] = append(l.byWallet[wallet], derivedMark{source: pos, at: now})
		l.mu.Unlock()
	})
	return l, sub, err
}

// covering is when the first derived event of wallet that answers position
// pos or a later one came; false while none has.
func (l *derivedLog) covering(wallet string, pos int64) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, d := range l.byWallet[wallet] {
		if d.source >= pos {
			return d.at, true
		}
	}
	return time.Time{}, false
}

func measurePipeline(ctx context.Context, js jetstream.JetStream, nc *nats.Conn, t Target, o PipelineOptions, failed <-chan error) (PipelineRound, error) {
	var (
		mu     sync.Mutex
		events = map[int64]time.Time{}
	)
	derived, sub, err := subscribeDerived(nc)
	if err != nil {
		return PipelineRound{}, err
	}
	defer sub.Unsubscribe() //nolint:errcheck
	var stream jetstream.Stream
	for stream == nil {
		// The feeder creates EVENTS when it starts.
		if stream, err = js.Stream(ctx, contract.EventsStream); err != nil {
			if !errors.Is(err, jetstream.ErrStreamNotFound) {
				return PipelineRound{}, err
			}
			select {
			case <-ctx.Done():
				return PipelineRound{}, ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return PipelineRound{}, err
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		now := time.Now()
		if pos, err := strconv.ParseInt(m.Headers().Get(contract.HeaderEventPosition), 10, 64); err == nil {
			mu.Lock()
			events[pos] = now
			mu.Unlock()
		}
	})
	if err != nil {
		return PipelineRound{}, err
	}
	defer cc.Stop()

	pool, err := writerPool(ctx, t, o.Writers)
	if err != nil {
		return PipelineRound{}, err
	}
	defer pool.Close()
	commits, elapsed, err := appendPaced(ctx, pool, liveOptions{rate: o.Rate, duration: o.Duration, writers: o.Writers, seed: o.Seed, log: o.Logger})
	if err != nil {
		return PipelineRound{}, err
	}
	// The wallet of each appended position.
	positions := make([]int64, len(commits))
	for i, cm := range commits {
		positions[i] = cm.pos
	}
	walletOf := map[int64]string{}
	rows, err := pool.Query(ctx, `SELECT position, aggregate_id FROM eventstore.events WHERE position = ANY($1)`, positions)
	if err != nil {
		return PipelineRound{}, err
	}
	for rows.Next() {
		var pos int64
		var id string
		if err := rows.Scan(&pos, &id); err != nil {
			return PipelineRound{}, err
		}
		walletOf[pos] = id
	}
	if err := rows.Err(); err != nil {
		return PipelineRound{}, err
	}

	// Wait until every append has its message and a derived event.
	covered := func(pos int64) (eventAt, derivedAt time.Time, ok bool) {
		eventAt, ok = events[pos]
		if !ok {
			return
		}
		derivedAt, ok = derived.covering(walletOf[pos], pos)
		return eventAt, derivedAt, ok
	}
	deadline := time.Now().Add(deliveryTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		mu.Lock()
		missing := 0
		for _, cm := range commits {
			if _, _, ok := covered(cm.pos); !ok {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			return PipelineRound{}, fmt.Errorf("bench: %d of %d appends without a derived event within %v", missing, len(commits), deliveryTimeout)
		}
		select {
		case <-ctx.Done():
			return PipelineRound{}, ctx.Err()
		case err := <-failed:
			return PipelineRound{}, err
		case <-tick.C:
		}
	}
	mu.Lock()
	defer mu.Unlock()
	toEvents := make([]time.Duration, len(commits))
	toDerived := make([]time.Duration, len(commits))
	for i, cm := range commits {
		e, d, _ := covered(cm.pos)
		toEvents[i], toDerived[i] = e.Sub(cm.at), d.Sub(cm.at)
	}
	return PipelineRound{Events: summarize(toEvents, o.Rate, len(commits), elapsed), Derived: summarize(toDerived, o.Rate, len(commits), elapsed)}, nil
}

func summarize(lats []time.Duration, target, n int, elapsed time.Duration) Latency {
	slices.Sort(lats)
	return Latency{Rate: target, Achieved: rate(n, elapsed), Events: n,
		P50: percentile(lats, 50), P90: percentile(lats, 90), P99: percentile(lats, 99), Max: lats[len(lats)-1]}
}

// Summary is the benchmark's report.
func (r PipelineResult) Summary() string {
	if len(r.Rounds) == 0 {
		return "no rounds\n"
	}
	var b strings.Builder
	best := r.Best()
	fmt.Fprintf(&b, "append → derived event on project.wallet_balance.> at %d ev/s (achieved %.0f), %d events, best of %d rounds:\n",
		best.Derived.Rate, best.Derived.Achieved, best.Derived.Events, len(r.Rounds))
	fmt.Fprintf(&b, "  derived  p50 %s  p90 %s  p99 %s  max %s   goal p99 ≤ %s: %s\n",
		ms(best.Derived.P50), ms(best.Derived.P90), ms(best.Derived.P99), ms(best.Derived.Max), ms(pipelineGoal), verdict(best.Derived.P99 <= pipelineGoal))
	fmt.Fprintf(&b, "  EVENTS   p50 %s  p90 %s  p99 %s  max %s   (feeder stage alone, same appends)\n",
		ms(best.Events.P50), ms(best.Events.P90), ms(best.Events.P99), ms(best.Events.Max))
	fmt.Fprintf(&b, "  ratio derived p99 / EVENTS p99: %.1f\n", best.Ratio())
	if r.Servers != "" {
		fmt.Fprintf(&b, "  %s; GOMAXPROCS %d\n", r.Servers, runtime.GOMAXPROCS(0))
	}
	return b.String()
}

// Markdown is the benchmark's table for docs/benchmarks.md.
func (r PipelineResult) Markdown(command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "`%s`\n\n| round | events | achieved ev/s | EVENTS p50 / p99 | derived p50 / p99 / max | ratio p99 |\n|---|---|---|---|---|---|\n", command)
	for i, rd := range r.Rounds {
		fmt.Fprintf(&b, "| %d | %d | %.0f | %s / %s | %s / %s / %s | %.1f |\n", i+1, rd.Derived.Events, rd.Derived.Achieved,
			ms(rd.Events.P50), ms(rd.Events.P99), ms(rd.Derived.P50), ms(rd.Derived.P99), ms(rd.Derived.Max), rd.Ratio())
	}
	return b.String()
}
