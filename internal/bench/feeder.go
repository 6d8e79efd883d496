package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/eventstore"
)

// Goals of the feeder benchmark (DESIGN.md §5).
const (
	GoalFeederRatio = 0.85
	GoalLiveP99     = 5 * time.Millisecond
)

// FeederOptions configure the feeder benchmark. Zero fields take the
// defaults given with them.
type FeederOptions struct {
	// Events to load into the store (default 500000).
	Events int
	// Aggregates (wallets) the events are spread over (default Events/10,
	// at most 50000).
	Aggregates int
	// Rounds of raw relay then feeder, run alternately (default 3).
	Rounds int
	// Rate of live appends in events per second (default 2000).
	Rate int
	// Duration of the live appends (default 10s).
	Duration time.Duration
	// Writers append the live events concurrently (default 4).
	Writers int
	// Seed of the generated data (default 1).
	Seed uint64
	// CPUProfileDir, when set, receives a CPU profile of each measured run
	// (raw-<round>.pprof, feeder-<round>.pprof, live.pprof). The embedded NATS server
	// runs in this process, so the profiles include its work.
	CPUProfileDir string
	// Progress receives a line per step and run (nil: discarded).
	Progress io.Writer
	// Logger receives the feeders' logs (nil: discarded).
	Logger *slog.Logger
}

func (o FeederOptions) withDefaults() FeederOptions {
	if o.Events == 0 {
		o.Events = 500000
	}
	if o.Aggregates == 0 {
		o.Aggregates = max(1, min(50000, o.Events/10))
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.Rate == 0 {
		o.Rate = 2000
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	if o.Writers == 0 {
		o.Writers = 4
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

func (o FeederOptions) validate() error {
	var p []string
	if o.Events < 1 {
		p = append(p, fmt.Sprintf("events %d: want at least 1", o.Events))
	}
	if o.Aggregates < 1 {
		p = append(p, fmt.Sprintf("aggregates %d: want at least 1", o.Aggregates))
	}
	if o.Rounds < 1 {
		p = append(p, fmt.Sprintf("rounds %d: want at least 1", o.Rounds))
	}
	if o.Rate < 1 {
		p = append(p, fmt.Sprintf("rate %d: want at least 1 event/s", o.Rate))
	}
	if o.Duration <= 0 || float64(o.Rate)*o.Duration.Seconds() < 1 {
		p = append(p, fmt.Sprintf("duration %v: want at least one live event at %d ev/s", o.Duration, o.Rate))
	}
	if o.Writers < 1 {
		p = append(p, fmt.Sprintf("writers %d: want at least 1", o.Writers))
	}
	if len(p) > 0 {
		return fmt.Errorf("bench: invalid options: %s", strings.Join(p, "; "))
	}
	return nil
}

// FeederResult is what the feeder benchmark measured.
type FeederResult struct {
	Date       time.Time
	Events     int
	Aggregates int
	NATSNoSync bool
	// Target describes the servers (NATS process or embedded, PostgreSQL
	// settings) for the report.
	Target Target
	// Raw and Feeder hold each round's run, in order.
	Raw, Feeder []Run
	Live        Latency
}

// BestRaw is the fastest raw relay run.
func (r FeederResult) BestRaw() Run { return best(r.Raw) }

// BestFeeder is the fastest feeder run.
func (r FeederResult) BestFeeder() Run { return best(r.Feeder) }

// Ratio is the best feeder rate over the best raw relay rate.
func (r FeederResult) Ratio() float64 { return ratio(r.BestFeeder().Rate(), r.BestRaw().Rate()) }

// MedianRatio is the median feeder rate over the median raw relay rate.
func (r FeederResult) MedianRatio() float64 { return ratio(median(r.Feeder), median(r.Raw)) }

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func best(runs []Run) Run {
	var b Run
	for _, r := range runs {
		if r.Rate() > b.Rate() {
			b = r
		}
	}
	return b
}

func median(runs []Run) float64 {
	if len(runs) == 0 {
		return 0
	}
	rates := make([]float64, len(runs))
	for i, r := range runs {
		rates[i] = r.Rate()
	}
	slices.Sort(rates)
	if n := len(rates); n%2 == 0 {
		return (rates[n/2-1] + rates[n/2]) / 2
	}
	return rates[len(rates)/2]
}

// Feeder runs the feeder benchmark against t: it migrates and loads the
// store, runs the raw relay and the feeder's backfill alternately, then
// measures the live latency with a feeder that has caught up.
func Feeder(ctx context.Context, t Target, opts FeederOptions) (FeederResult, error) {
	o := opts.withDefaults()
	if err := o.validate(); err != nil {
		return FeederResult{}, err
	}
	res := FeederResult{Date: time.Now(), Events: o.Events, Aggregates: o.Aggregates, NATSNoSync: t.NATSNoSync, Target: t}
	out := o.Progress

	// An administrative pool and connection: migration, loading, resets.
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

	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		return res, err
	}
	started := time.Now()
	head, err := loadEvents(ctx, pool, o.Events, o.Aggregates, o.Seed)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(out, "loaded %d events over %d wallets with COPY in %v (head position %d)\n",
		o.Events, o.Aggregates, time.Since(started).Round(time.Millisecond), head)

	for round := 1; round <= o.Rounds; round++ {
		run, err := profiled(o.CPUProfileDir, fmt.Sprintf("raw-%d.pprof", round), cpuMeasured(t, func() (Run, error) {
			return rawRelay(ctx, t, o.Events)
		}))
		if err != nil {
			return res, fmt.Errorf("round %d raw relay: %w", round, err)
		}
		res.Raw = append(res.Raw, run)
		fmt.Fprintf(out, "round %d/%d  raw relay  %s\n", round, o.Rounds, runLine(run))
		// The RAW stream's files would otherwise sit beside the feeder's.
		if err := deleteStream(ctx, js, rawStream); err != nil {
			return res, err
		}

		run, err = profiled(o.CPUProfileDir, fmt.Sprintf("feeder-%d.pprof", round), cpuMeasured(t, func() (Run, error) {
			return feederBackfill(ctx, t, js, head, o.Events, o.Logger)
		}))
		if err != nil {
			return res, fmt.Errorf("round %d feeder: %w", round, err)
		}
		res.Feeder = append(res.Feeder, run)
		fmt.Fprintf(out, "round %d/%d  feeder     %s\n", round, o.Rounds, runLine(run))
	}

	// The last feeder run left EVENTS holding the whole store: the live
	// feeder resumes there.
	res.Live, err = profiled(o.CPUProfileDir, "live.pprof", func() (Latency, error) {
		return liveLatency(ctx, t, head, liveOptions{
			rate: o.Rate, duration: o.Duration, writers: o.Writers, seed: o.Seed, log: o.Logger,
		})
	})
	if err != nil {
		return res, fmt.Errorf("live latency: %w", err)
	}
	fmt.Fprintf(out, "live: %d events appended by %d writers at %.0f ev/s\n", res.Live.Events, o.Writers, res.Live.Achieved)
	return res, nil
}

func runLine(r Run) string {
	line := fmt.Sprintf("%d events in %6.2fs  %6.0f ev/s", r.Events, r.Elapsed.Seconds(), r.Rate())
	if r.ClientCPU > 0 {
		line += fmt.Sprintf("  CPU: benchmark process %.2fs", r.ClientCPU.Seconds())
		if r.ServerCPU > 0 {
			line += fmt.Sprintf(", nats-server %.2fs", r.ServerCPU.Seconds())
		}
		if r.PostgresCPU > 0 {
			line += fmt.Sprintf(", postgres %.2fs", r.PostgresCPU.Seconds())
		}
	}
	return line
}

// cpuMeasured wraps a run so that it records the CPU time this process, the
// nats-server process (when t has one) and PostgreSQL's processes (when t
// knows its postmaster) used during it.
func cpuMeasured(t Target, fn func() (Run, error)) func() (Run, error) {
	return func() (Run, error) {
		c0 := processCPU(os.Getpid())
		var s0 time.Duration
		if t.NATSPID != 0 {
			s0 = processCPU(t.NATSPID)
		}
		p0 := serverCPU(t.PostgresPID)
		run, err := fn()
		run.ClientCPU = processCPU(os.Getpid()) - c0
		if t.NATSPID != 0 {
			run.ServerCPU = processCPU(t.NATSPID) - s0
		}
		if t.PostgresPID != 0 {
			run.PostgresCPU = serverCPU(t.PostgresPID) - p0
		}
		return run, err
	}
}

// profiled runs fn, under a CPU profile written to dir/name when dir is set,
// after a garbage collection so that no run pays for the previous one's.
func profiled[T any](dir, name string, fn func() (T, error)) (T, error) {
	runtime.GC()
	if dir == "" {
		return fn()
	}
	var zero T
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return zero, fmt.Errorf("bench: cpu profile: %w", err)
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return zero, fmt.Errorf("bench: cpu profile: %w", err)
	}
	res, err := fn()
	pprof.StopCPUProfile()
	return res, err
}

// Summary is the result as the final block of the benchmark's output.
func (r FeederResult) Summary() string {
	var b strings.Builder
	raw, fd := r.BestRaw(), r.BestFeeder()
	fmt.Fprintf(&b, "feeder backfill: %d events  raw relay %.0f ev/s  feeder %.0f ev/s  ratio %.2f (goal ≥ %.2f) %s\n",
		r.Events, raw.Rate(), fd.Rate(), r.Ratio(), GoalFeederRatio, verdict(r.Ratio() >= GoalFeederRatio))
	fmt.Fprintf(&b, "  best of %d runs each; medians: raw relay %.0f ev/s  feeder %.0f ev/s  ratio %.2f\n",
		len(r.Raw), median(r.Raw), median(r.Feeder), r.MedianRatio())
	if rc, fc := meanCPU(r.Raw, false), meanCPU(r.Feeder, false); rc > 0 && fc > 0 {
		fmt.Fprintf(&b, "  CPU per event, mean of the runs: benchmark process raw relay %.1f µs, feeder %.1f µs (raw/feeder %.2f)",
			rc, fc, rc/fc)
		if rs, fs := meanCPU(r.Raw, true), meanCPU(r.Feeder, true); rs > 0 && fs > 0 {
			fmt.Fprintf(&b, "; nats-server raw relay %.1f µs, feeder %.1f µs", rs, fs)
		}
		fmt.Fprintln(&b)
	}
	l := r.Live
	fmt.Fprintf(&b, "live latency @%d ev/s: p50 %s  p90 %s  p99 %s  max %s (goal p99 ≤ %s) %s\n",
		l.Rate, ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max), ms(GoalLiveP99), verdict(l.P99 <= GoalLiveP99))
	fmt.Fprintf(&b, "  %d events, achieved %.0f ev/s; commit → delivered from stream EVENTS\n", l.Events, l.Achieved)
	fmt.Fprintf(&b, "  %s; GOMAXPROCS %d\n", r.Target.Describe(), runtime.GOMAXPROCS(0))
	return b.String()
}

// meanCPU is the mean CPU time per event of the runs, in microseconds: the
// benchmark process's, or the nats-server process's with server.
func meanCPU(runs []Run, server bool) float64 {
	var cpu time.Duration
	events := 0
	for _, r := range runs {
		c := r.ClientCPU
		if server {
			c = r.ServerCPU
		}
		if c <= 0 {
			return 0
		}
		cpu += c
		events += r.Events
	}
	if events == 0 {
		return 0
	}
	return float64(cpu.Microseconds()) / float64(events)
}

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

// Markdown is the result as a table for docs/benchmarks.md, naming the date
// and the command that produced it.
func (r FeederResult) Markdown(command string) string {
	var b strings.Builder
	fmt.Fprintln(&b, "| Date | Command | Events | Raw relay | Feeder | Ratio (goal ≥ 0.85) | Live rate | p50 | p90 | p99 (goal ≤ 5 ms) | max |")
	fmt.Fprintln(&b, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	l := r.Live
	fmt.Fprintf(&b, "| %s | `%s` | %d | %.0f ev/s | %.0f ev/s | %.2f | %.0f ev/s | %s | %s | %s | %s |\n",
		r.Date.Format(time.DateOnly), command, r.Events, r.BestRaw().Rate(), r.BestFeeder().Rate(), r.Ratio(),
		l.Achieved, ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max))
	fmt.Fprintln(&b)
	fmt.Fprintf(&b, "Runs (ev/s), raw relay: %s; feeder: %s.\n", rates(r.Raw), rates(r.Feeder))
	return b.String()
}

func rates(runs []Run) string {
	s := make([]string, len(runs))
	for i, r := range runs {
		s[i] = fmt.Sprintf("%.0f", r.Rate())
	}
	return strings.Join(s, ", ")
}
