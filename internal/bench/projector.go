package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

// Goals of the projector benchmark (DESIGN.md §5).
const (
	GoalProjectorRatio = 0.5
	GoalRebuildRatio   = 0.5
	GoalReplicaSpeedup = 3.5
	GoalGlobalRatio    = 1.2
	GoalProjectorRSS   = 300e6 // bytes: 300 MB
)

// Parts of the projector benchmark, in the order they run.
const (
	PartCatchUp  = "catchup"
	PartRebuild  = "rebuild"
	PartReplicas = "replicas"
	PartMemory   = "memory"
)

// ProjectorParts lists every part of the projector benchmark.
var ProjectorParts = []string{PartCatchUp, PartRebuild, PartReplicas, PartMemory}

// ProjectorOptions configure the projector benchmark. Zero fields take the
// defaults given with them.
type ProjectorOptions struct {
	// Events published to EVENTS for the catch-up and rebuild parts
	// (default 300000), spread evenly over Aggregates wallets (default
	// 100000) and interleaved: every wallet's first event, then every
	// wallet's second …
	Events     int
	Aggregates int
	// Rounds of raw limit then projector, run alternately (default 3).
	Rounds int
	// RebuildBatch is the BatchSize of the rebuilt projection (default 5000).
	RebuildBatch int
	// NoWriteBehind runs the catch-up and rebuild projections with
	// StateWriteInterval(0): every batch writes its partitions' records.
	NoWriteBehind bool
	// ScaleAggregates and ScaleEvents are the wallets and events per wallet
	// of the replica part (default 2000 × 3).
	ScaleAggregates int
	ScaleEvents     int
	// HandlerDelay is how long the replica part's handler waits per event,
	// standing in for I/O (default 2ms).
	HandlerDelay time.Duration
	// Replicas are the replica counts of the partitioned projection
	// (default 1, 2, 4); the global projection runs with the first and the
	// last of them.
	Replicas []int
	// LeaseTTL of the replicas in the replica part (default 2s).
	LeaseTTL time.Duration
	// Partitions the memory part's projector loads (default 1000000).
	Partitions int
	// MemoryLimit, when set (default "250MiB"; "off" skips it), runs the
	// memory part's child a second time with GOMEMLIMIT set to it.
	MemoryLimit string
	// Child is the command that runs ProjectorChild in a process of its own
	// (the memory part reads that process's RSS), and ChildEnv the
	// environment it adds. Without Child the memory part is skipped.
	Child    []string
	ChildEnv []string
	// Parts to run (default ProjectorParts). The rebuild part publishes the
	// events itself when the catch-up part does not run.
	Parts []string
	// Seed of the generated data (default 1).
	Seed uint64
	// CPUProfileDir, when set, receives a CPU profile of each measured run
	// (publish-<round>.pprof, catchup-<round>.pprof, read-<round>.pprof,
	// rebuild-<round>.pprof, replicas-<kind>-<n>.pprof) and a heap profile
	// of each memory child after its GC (memory-default.pprof,
	// memory-gomemlimit.pprof). An embedded NATS server (-embedded) runs
	// in this process, and the CPU profiles then include its work.
	CPUProfileDir string
	// Progress receives a line per step and run (nil: discarded).
	Progress io.Writer
	// Logger receives the projectors' logs (nil: discarded).
	Logger *slog.Logger
}

func (o ProjectorOptions) withDefaults() ProjectorOptions {
	if o.Events == 0 {
		o.Events = 300000
	}
	if o.Aggregates == 0 {
		o.Aggregates = max(1, min(100000, o.Events/3))
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.RebuildBatch == 0 {
		o.RebuildBatch = 5000
	}
	if o.ScaleAggregates == 0 {
		o.ScaleAggregates = 2000
	}
	if o.ScaleEvents == 0 {
		o.ScaleEvents = 3
	}
	if o.HandlerDelay == 0 {
		o.HandlerDelay = 2 * time.Millisecond
	}
	if len(o.Replicas) == 0 {
		o.Replicas = []int{1, 2, 4}
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 2 * time.Second
	}
	if o.Partitions == 0 {
		o.Partitions = 1000000
	}
	if o.MemoryLimit == "" {
		o.MemoryLimit = "250MiB"
	}
	if len(o.Parts) == 0 {
		o.Parts = ProjectorParts
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

func (o ProjectorOptions) validate() error {
	var p []string
	if o.Events < 1 {
		p = append(p, fmt.Sprintf("events %d: want at least 1", o.Events))
	}
	if o.Aggregates < 1 || o.Aggregates > o.Events {
		p = append(p, fmt.Sprintf("aggregates %d: want 1..events", o.Aggregates))
	}
	if o.Rounds < 1 {
		p = append(p, fmt.Sprintf("rounds %d: want at least 1", o.Rounds))
	}
	if o.RebuildBatch < 1 {
		p = append(p, fmt.Sprintf("rebuild batch %d: want at least 1", o.RebuildBatch))
	}
	if o.ScaleAggregates < 1 || o.ScaleEvents < 1 {
		p = append(p, fmt.Sprintf("scale %d × %d: want at least one wallet and one event each", o.ScaleAggregates, o.ScaleEvents))
	}
	if o.HandlerDelay < 0 {
		p = append(p, fmt.Sprintf("handler delay %v: want ≥ 0", o.HandlerDelay))
	}
	for _, n := range o.Replicas {
		if n < 1 || n > 64 {
			p = append(p, fmt.Sprintf("replicas %d: want 1..64", n))
		}
	}
	if o.LeaseTTL < time.Second {
		p = append(p, fmt.Sprintf("lease TTL %v: want at least 1s", o.LeaseTTL))
	}
	if o.Partitions < 1 {
		p = append(p, fmt.Sprintf("partitions %d: want at least 1", o.Partitions))
	}
	for _, part := range o.Parts {
		if !slices.Contains(ProjectorParts, part) {
			p = append(p, fmt.Sprintf("part %q: want one of %s", part, strings.Join(ProjectorParts, ", ")))
		}
	}
	if len(p) > 0 {
		return fmt.Errorf("bench: invalid options: %s", strings.Join(p, "; "))
	}
	return nil
}

func (o ProjectorOptions) runs(part string) bool { return slices.Contains(o.Parts, part) }

// ProjectorResult is what the projector benchmark measured.
type ProjectorResult struct {
	Date       time.Time
	Events     int
	Aggregates int
	NATSNoSync bool
	// Servers describes the servers the benchmark ran against.
	Servers string
	// Publish and CatchUp hold each round's raw async publish and projector
	// catch-up runs, in order.
	Publish []Run
	CatchUp []CatchUpRun
	// Read and Rebuild hold each round's raw ordered read and rebuild.
	Read         []Run
	Rebuild      []CatchUpRun
	RebuildBatch int
	// RecordWrite holds each round's raw write of as many records as the
	// rebuild writes (rawRecordWrite).
	RecordWrite []Run
	// Scale holds the replica part's runs.
	Scale        []ScaleRun
	ScaleEvents  int
	HandlerDelay time.Duration
	// Memory holds the memory part's child runs.
	Memory []MemoryRun
}

// BestPublish is the fastest raw publish run.
func (r ProjectorResult) BestPublish() Run { return best(r.Publish) }

// BestCatchUp is the fastest projector catch-up run.
func (r ProjectorResult) BestCatchUp() Run { return best(runsOf(r.CatchUp)) }

// BestRebuild is the fastest rebuild run.
func (r ProjectorResult) BestRebuild() Run { return best(runsOf(r.Rebuild)) }

func runsOf(crs []CatchUpRun) []Run {
	out := make([]Run, len(crs))
	for i, cr := range crs {
		out[i] = cr.Run
	}
	return out
}

// busy describes the share of the runs' time the projector spent in
// batches and their mean size.
func busy(crs []CatchUpRun) string {
	s := make([]string, len(crs))
	for i, cr := range crs {
		s[i] = fmt.Sprintf("%.0f%% (%.0f)", 100*cr.Busy(), cr.MeanBatch())
	}
	return strings.Join(s, ", ")
}

// CatchUpRatio is the best catch-up rate over the best raw publish rate.
func (r ProjectorResult) CatchUpRatio() float64 {
	return ratio(r.BestCatchUp().Rate(), r.BestPublish().Rate())
}

// RebuildRatio is the best rebuild rate over the best raw ordered read rate.
func (r ProjectorResult) RebuildRatio() float64 {
	return ratio(r.BestRebuild().Rate(), best(r.Read).Rate())
}

// RebuildCeiling is the ratio a rebuild would reach if handling cost
// nothing: the best raw read's time over that time plus the best raw write
// of the records a rebuild writes once it reaches the head of the stream
// (write-behind: each partition's record once, after its last event).
func (r ProjectorResult) RebuildCeiling() float64 {
	read, write := best(r.Read), best(r.RecordWrite)
	if read.Elapsed <= 0 || write.Elapsed <= 0 {
		return 0
	}
	return float64(read.Elapsed) / float64(read.Elapsed+write.Elapsed)
}

// scaleRate is the rate of the replica part's run of kind with n replicas
// (0 when it did not run).
func (r ProjectorResult) scaleRate(kind string, n int) float64 {
	for _, s := range r.Scale {
		if s.Kind == kind && s.Replicas == n {
			return s.Rate()
		}
	}
	return 0
}

func (r ProjectorResult) scaleCounts(kind string) []int {
	var out []int
	for _, s := range r.Scale {
		if s.Kind == kind {
			out = append(out, s.Replicas)
		}
	}
	return out
}

// spreadBound is the speed-up from lo to hi replicas that the spread of
// partitions over replicas allows when every event costs the same.
func (r ProjectorResult) spreadBound(lo, hi int) float64 {
	share := func(n int) float64 {
		for _, s := range r.Scale {
			if s.Kind == kindPartitioned && s.Replicas == n {
				return s.MaxShare
			}
		}
		return 0
	}
	return ratio(share(lo), share(hi))
}

// Speedup is the partitioned projection's rate with the most replicas
// over its rate with the fewest.
func (r ProjectorResult) Speedup() (lo, hi int, x float64) {
	return r.scaleRatio(kindPartitioned)
}

// GlobalRatio is the global projection's rate with the most replicas over
// its rate with the fewest.
func (r ProjectorResult) GlobalRatio() (lo, hi int, x float64) {
	return r.scaleRatio(kindGlobal)
}

func (r ProjectorResult) scaleRatio(kind string) (lo, hi int, x float64) {
	ns := r.scaleCounts(kind)
	if len(ns) < 2 {
		return 0, 0, 0
	}
	lo, hi = slices.Min(ns), slices.Max(ns)
	return lo, hi, ratio(r.scaleRate(kind, hi), r.scaleRate(kind, lo))
}

// Projector runs the projector benchmark against t (only its NATS server
// is used): the catch-up of a partitioned KV projection against the raw
// async publish of its events, a rebuild against a raw ordered read of the
// same stream, the speed-up of an I/O-bound projection with replicas, and
// the memory of a projector that knows o.Partitions partitions.
func Projector(ctx context.Context, t Target, opts ProjectorOptions) (ProjectorResult, error) {
	o := opts.withDefaults()
	if err := o.validate(); err != nil {
		return ProjectorResult{}, err
	}
	res := ProjectorResult{Date: time.Now(), Events: o.Events, Aggregates: o.Aggregates, NATSNoSync: t.NATSNoSync, Servers: t.Describe(),
		RebuildBatch: o.RebuildBatch, HandlerDelay: o.HandlerDelay, ScaleEvents: o.ScaleAggregates * o.ScaleEvents}
	out := o.Progress

	nc, err := nats.Connect(t.NATSURL, nats.Name("jetproj-bench-admin"))
	if err != nil {
		return res, fmt.Errorf("bench: nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return res, err
	}
	b := &projectorBench{t: t, o: o, js: js, out: out}

	if o.runs(PartCatchUp) || o.runs(PartRebuild) {
		started := time.Now()
		b.events = walletEvents(o.Seed, aggregateWallet, o.Aggregates, o.Events, 1)
		b.nextPos = int64(o.Events) + 1
		fmt.Fprintf(out, "generated %d events over %d wallets in %v\n", o.Events, o.Aggregates, time.Since(started).Round(time.Millisecond))
	}
	if o.runs(PartCatchUp) {
		if err := b.catchUp(ctx, &res); err != nil {
			return res, err
		}
	}
	if o.runs(PartRebuild) {
		if err := b.rebuild(ctx, &res); err != nil {
			return res, err
		}
	}
	b.events = nil // the rest does not need them
	if o.runs(PartReplicas) {
		if err := b.replicas(ctx, &res); err != nil {
			return res, err
		}
	}
	if o.runs(PartMemory) {
		if len(o.Child) == 0 {
			fmt.Fprintln(out, "memory: skipped (no child command)")
		} else if err := b.memory(ctx, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// projectorBench is one run of the projector benchmark.
type projectorBench struct {
	t   Target
	o   ProjectorOptions
	js  jetstream.JetStream
	out io.Writer
	// events of the catch-up and rebuild parts; nextPos is the next unused
	// event position (message ids must stay unique within the stream's
	// duplicate window).
	events    []eventstore.Event
	nextPos   int64
	published bool // EVENTS holds events
}

// resetEvents deletes the stream EVENTS and creates it again, empty, with
// the feeder's settings.
func resetEvents(ctx context.Context, js jetstream.JetStream) error {
	cfg := feeder.Config{}.Defaults()
	if err := deleteStream(ctx, js, cfg.Stream); err != nil {
		return err
	}
	if _, _, err := feeder.EnsureStream(ctx, js, cfg); err != nil {
		return err
	}
	return nil
}

// catchUp alternates the raw async publish of the events into an empty
// EVENTS and a fresh projection catching up with them.
func (b *projectorBench) catchUp(ctx context.Context, res *ProjectorResult) error {
	o := b.o
	for round := 1; round <= o.Rounds; round++ {
		if err := resetEvents(ctx, b.js); err != nil {
			return err
		}
		run, err := profiled(o.CPUProfileDir, fmt.Sprintf("publish-%d.pprof", round), func() (Run, error) {
			return publishEvents(ctx, b.t, b.events)
		})
		if err != nil {
			return fmt.Errorf("round %d raw publish: %w", round, err)
		}
		b.published = true
		res.Publish = append(res.Publish, run)
		fmt.Fprintf(b.out, "round %d/%d  raw publish  %s\n", round, o.Rounds, runLine(run))

		name := fmt.Sprintf("bench_balance_%d", round)
		cr, err := profiled(o.CPUProfileDir, fmt.Sprintf("catchup-%d.pprof", round), func() (CatchUpRun, error) {
			return catchUpRun(ctx, b.t, b.js, name, 0, len(b.events), o.NoWriteBehind, o.Logger)
		})
		if err != nil {
			return fmt.Errorf("round %d projector: %w", round, err)
		}
		res.CatchUp = append(res.CatchUp, cr)
		fmt.Fprintf(b.out, "round %d/%d  projector    %s\n", round, o.Rounds, cr)
		if err := dropProjection(ctx, b.js, name); err != nil {
			return err
		}
	}
	return nil
}

// rebuild alternates a raw ordered read of the wallet events and a fresh
// projection with a large batch rebuilding from them.
func (b *projectorBench) rebuild(ctx context.Context, res *ProjectorResult) error {
	o := b.o
	if !b.published {
		if err := resetEvents(ctx, b.js); err != nil {
			return err
		}
		run, err := publishEvents(ctx, b.t, b.events)
		if err != nil {
			return err
		}
		fmt.Fprintf(b.out, "published the events for the rebuild: %s\n", runLine(run))
	}
	for round := 1; round <= o.Rounds; round++ {
		run, err := profiled(o.CPUProfileDir, fmt.Sprintf("read-%d.pprof", round), func() (Run, error) {
			return rawRead(ctx, b.t, len(b.events))
		})
		if err != nil {
			return fmt.Errorf("round %d raw read: %w", round, err)
		}
		res.Read = append(res.Read, run)
		fmt.Fprintf(b.out, "round %d/%d  raw read     %s\n", round, o.Rounds, runLine(run))

		records := min(o.Aggregates, len(b.events))
		wrun, err := rawRecordWrite(ctx, b.t, records)
		if err != nil {
			return fmt.Errorf("round %d raw record write: %w", round, err)
		}
		res.RecordWrite = append(res.RecordWrite, wrun)
		fmt.Fprintf(b.out, "round %d/%d  raw records  %s (records a rebuild writes)\n", round, o.Rounds, runLine(wrun))

		name := fmt.Sprintf("bench_rebuild_%d", round)
		cr, err := profiled(o.CPUProfileDir, fmt.Sprintf("rebuild-%d.pprof", round), func() (CatchUpRun, error) {
			return catchUpRun(ctx, b.t, b.js, name, o.RebuildBatch, len(b.events), o.NoWriteBehind, o.Logger)
		})
		if err != nil {
			return fmt.Errorf("round %d rebuild: %w", round, err)
		}
		res.Rebuild = append(res.Rebuild, cr)
		fmt.Fprintf(b.out, "round %d/%d  rebuild      %s\n", round, o.Rounds, cr)
		if err := dropProjection(ctx, b.js, name); err != nil {
			return err
		}
	}
	return nil
}

// Summary is the result as the final block of the benchmark's output.
func (r ProjectorResult) Summary() string {
	var b strings.Builder
	if len(r.CatchUp) > 0 {
		fmt.Fprintf(&b, "projection catch-up (KV state): %d events over %d wallets  raw publish %.0f ev/s  projector %.0f ev/s  ratio %.2f (goal ≥ %.2f) %s\n",
			r.Events, r.Aggregates, r.BestPublish().Rate(), r.BestCatchUp().Rate(), r.CatchUpRatio(), GoalProjectorRatio, verdict(r.CatchUpRatio() >= GoalProjectorRatio))
		fmt.Fprintf(&b, "  best of %d runs each; medians: raw publish %.0f ev/s  projector %.0f ev/s  ratio %.2f\n",
			len(r.Publish), median(r.Publish), median(runsOf(r.CatchUp)), ratio(median(runsOf(r.CatchUp)), median(r.Publish)))
		fmt.Fprintf(&b, "  projector in batches (mean messages per batch): %s\n", busy(r.CatchUp))
	}
	if len(r.Rebuild) > 0 {
		fmt.Fprintf(&b, "rebuild (BatchSize %d): %d events  raw ordered read %.0f ev/s  rebuild %.0f ev/s  ratio %.2f (goal ≥ %.2f) %s\n",
			r.RebuildBatch, r.Events, best(r.Read).Rate(), r.BestRebuild().Rate(), r.RebuildRatio(), GoalRebuildRatio, verdict(r.RebuildRatio() >= GoalRebuildRatio))
		fmt.Fprintf(&b, "  best of %d runs each; medians: raw read %.0f ev/s  rebuild %.0f ev/s  ratio %.2f\n",
			len(r.Read), median(r.Read), median(runsOf(r.Rebuild)), ratio(median(runsOf(r.Rebuild)), median(r.Read)))
		fmt.Fprintf(&b, "  rebuild in batches (mean messages per batch): %s\n", busy(r.Rebuild))
		if c := r.RebuildCeiling(); c > 0 {
			w := best(r.RecordWrite)
			fmt.Fprintf(&b, "  ceiling: raw write of the %d records a rebuild writes %.0f records/s (%.2fs); raw read + raw write gives ratio %.2f at most; the rebuild reaches %.2f of that\n",
				w.Events, w.Rate(), w.Elapsed.Seconds(), c, r.RebuildRatio()/c)
		}
	}
	if len(r.Scale) > 0 {
		fmt.Fprintf(&b, "replicas, handler waits %v per event, %d events:", r.HandlerDelay, r.ScaleEvents)
		for _, kind := range []string{kindPartitioned, kindGlobal} {
			ns := r.scaleCounts(kind)
			if len(ns) == 0 {
				continue
			}
			fmt.Fprintf(&b, "  %s", kind)
			for _, n := range ns {
				fmt.Fprintf(&b, " %d: %.0f ev/s", n, r.scaleRate(kind, n))
			}
		}
		fmt.Fprintln(&b)
		if lo, hi, x := r.Speedup(); hi > 0 {
			fmt.Fprintf(&b, "  partitioned speed-up %d vs %d replicas: %.2f× (goal ≥ %.1f×) %s; hash spread bounds it to %.2f×\n",
				hi, lo, x, GoalReplicaSpeedup, verdict(x >= GoalReplicaSpeedup), r.spreadBound(lo, hi))
		}
		if lo, hi, x := r.GlobalRatio(); hi > 0 {
			fmt.Fprintf(&b, "  global %d vs %d replicas: %.2f× (goal ≤ %.1f×, it cannot scale) %s\n", hi, lo, x, GoalGlobalRatio, verdict(x <= GoalGlobalRatio))
		}
	}
	for i, m := range r.Memory {
		if i == 0 {
			fmt.Fprintf(&b, "memory, %d known partitions (64 slots loaded in %.1fs):\n", m.Partitions, m.Load.Seconds())
		}
		fmt.Fprintf(&b, "  %-22s RSS %s  peak %s  Go heap in use %s  (goal RSS ≤ %s) %s;  after GC: heap %s, RSS %s\n",
			m.setting()+":", mb(m.RSS), mb(m.Peak), mb(m.HeapInuse), mb(GoalProjectorRSS), verdict(m.Peak <= GoalProjectorRSS),
			mb(m.LiveHeap), mb(m.RSSAfterGC))
	}
	fmt.Fprintf(&b, "  %s; GOMAXPROCS %d\n", strings.TrimSuffix(r.Servers, "; PostgreSQL throwaway, fsync off"), runtime.GOMAXPROCS(0))
	return b.String()
}

// mb formats bytes in MB (10⁶ bytes), the unit of the goal.
func mb(n uint64) string { return fmt.Sprintf("%.0f MB", float64(n)/1e6) }

// Markdown is the result as tables for docs/benchmarks.md, naming the date
// and the command that produced it.
func (r ProjectorResult) Markdown(command string) string {
	var b strings.Builder
	date := r.Date.Format(time.DateOnly)
	if len(r.CatchUp) > 0 || len(r.Rebuild) > 0 {
		fmt.Fprintln(&b, "| Date | Command | Events | Raw publish | Projector | Ratio (goal ≥ 0.5) | Raw ordered read | Rebuild | Ratio (goal ≥ 0.5) |")
		fmt.Fprintln(&b, "|---|---|---:|---:|---:|---:|---:|---:|---:|")
		fmt.Fprintf(&b, "| %s | `%s` | %d | %.0f ev/s | %.0f ev/s | %.2f | %.0f ev/s | %.0f ev/s | %.2f |\n",
			date, command, r.Events, r.BestPublish().Rate(), r.BestCatchUp().Rate(), r.CatchUpRatio(),
			best(r.Read).Rate(), r.BestRebuild().Rate(), r.RebuildRatio())
		fmt.Fprintln(&b)
		fmt.Fprintf(&b, "Runs (ev/s), raw publish: %s; projector: %s; raw read: %s; rebuild (BatchSize %d): %s.\n",
			rates(r.Publish), rates(runsOf(r.CatchUp)), rates(r.Read), r.RebuildBatch, rates(runsOf(r.Rebuild)))
		if c := r.RebuildCeiling(); c > 0 {
			fmt.Fprintf(&b, "Raw record writes (records/s): %s; ceiling (raw read + raw record write) %.2f; the rebuild reaches %.2f of it.\n",
				rates(r.RecordWrite), c, r.RebuildRatio()/c)
		}
		fmt.Fprintln(&b)
	}
	if len(r.Scale) > 0 {
		fmt.Fprintln(&b, "| Date | Projection | Replicas | Events | Rate | Ratio to fewest replicas | Goal |")
		fmt.Fprintln(&b, "|---|---|---:|---:|---:|---:|---|")
		for _, kind := range []string{kindPartitioned, kindGlobal} {
			ns := r.scaleCounts(kind)
			for _, n := range ns {
				goal := ""
				if n == slices.Max(ns) && len(ns) > 1 {
					goal = fmt.Sprintf("≥ %.1f×", GoalReplicaSpeedup)
					if kind == kindGlobal {
						goal = fmt.Sprintf("≤ %.1f×", GoalGlobalRatio)
					}
				}
				fmt.Fprintf(&b, "| %s | %s, %v handler | %d | %d | %.0f ev/s | %.2f× | %s |\n",
					date, kind, r.HandlerDelay, n, r.ScaleEvents, r.scaleRate(kind, n),
					ratio(r.scaleRate(kind, n), r.scaleRate(kind, slices.Min(ns))), goal)
			}
		}
		fmt.Fprintln(&b)
	}
	if len(r.Memory) > 0 {
		fmt.Fprintln(&b, "| Date | Partitions | Setting | RSS | Peak RSS (goal ≤ 300 MB) | Go heap in use | Live heap after GC | RSS after GC | Load |")
		fmt.Fprintln(&b, "|---|---:|---|---:|---:|---:|---:|---:|---:|")
		for _, m := range r.Memory {
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %.1f s |\n",
				date, m.Partitions, m.setting(), mb(m.RSS), mb(m.Peak), mb(m.HeapInuse), mb(m.LiveHeap), mb(m.RSSAfterGC), m.Load.Seconds())
		}
	}
	return b.String()
}

// StartNATSProcessServer starts only a nats-server process (default
// settings, its own directory), for benchmarks that need no PostgreSQL.
// Close stops it and removes its directory.
func StartNATSProcessServer(ctx context.Context) (*Servers, error) {
	n, err := StartNATSProcess(ctx)
	if err != nil {
		return nil, err
	}
	return &Servers{NATSProc: n, target: Target{NATSURL: n.URL(), NATSProcess: true, NATSPID: n.PID()}}, nil
}

// StartNATSServer starts only an embedded NATS server (NoSync, temporary
// directory), for benchmarks that need no PostgreSQL. Close stops it and
// removes its directory.
func StartNATSServer(ctx context.Context) (*Servers, error) {
	n, err := devenv.StartNATS(ctx, devenv.NATSOptions{NoSync: true})
	if err != nil {
		return nil, err
	}
	return &Servers{NATS: n, target: Target{NATSURL: n.URL(), NATSNoSync: true}}, nil
}
