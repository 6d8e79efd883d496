package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
)

// WaitForOptions configure the WaitFor benchmark.
type WaitForOptions struct {
	Rate     int
	Duration time.Duration
	// Writers append concurrently, each to its own 64 wallets; each append
	// is waited for on a goroutine of its own, as a request handler would.
	Writers  int
	Rounds   int
	Seed     uint64
	Logger   *slog.Logger
	Progress io.Writer
}

// WaitForRound is one measurement of the same appends: commit → WaitFor
// returned, and commit → the first derived event covering it.
type WaitForRound struct {
	WaitFor Latency
	Derived Latency
}

// WaitForResult is the outcome of WaitForLatency.
type WaitForResult struct{ Rounds []WaitForRound }

// WaitForLatency runs feeder, projector (wallet_balance, PostgreSQL read
// model) and emitter in this process, appends paced single events, and
// waits for each with one shared projector.Waiter (WaitFor: event-store
// lookup, stream locate, progress watch), measuring commit → WaitFor
// returned beside commit → derived event on project.wallet_balance.>.
func WaitForLatency(ctx context.Context, t Target, o WaitForOptions) (WaitForResult, error) {
	if o.Rate == 0 {
		o.Rate = 1000
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	o.Writers, o.Rounds = max(o.Writers, 1), max(o.Rounds, 1)
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	var res WaitForResult
	c, err := connect(ctx, t)
	if err != nil {
		return res, err
	}
	defer c.close()
	if _, err := eventstore.Migrate(ctx, c.pool); err != nil {
		return res, err
	}
	js, err := jetstream.New(c.nc)
	if err != nil {
		return res, err
	}
	f, err := startFeeder(ctx, t, o.Logger.With("service", "feeder"))
	if err != nil {
		return res, err
	}
	defer f.stop() //nolint:errcheck // the result is measured by then
	def := examples.WalletBalance(c.pool)
	if err := projector.NewAdmin(js, projector.AdminOptions{}).Init(ctx, def); err != nil {
		return res, err
	}
	p, err := projector.New(c.nc, projector.Options{Replica: "bench", Logger: o.Logger.With("service", "projector")}, def)
	if err != nil {
		return res, err
	}
	em, err := emitter.New(emitter.Config{}, c.pool, c.nc, o.Logger.With("service", "emitter"), nil)
	if err != nil {
		return res, err
	}
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{p.Run, em.Run} {
		wg.Go(func() {
			if err := run(sctx); err != nil {
				o.Logger.Error("service failed", "error", err)
			}
		})
	}
	defer func() { stop(); wg.Wait() }()
	pool, err := writerPool(ctx, t, o.Writers+16)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	w := projector.NewWaiter(js, pool)
	defer w.Close()
	fmt.Fprintf(o.Progress, "waitfor: feeder, projector (wallet_balance) and emitter started; warming up\n")
	warm := o
	warm.Rate, warm.Duration, warm.Seed = 50, time.Second, o.Seed^0x5a5a
	if _, err := measureWaitFor(ctx, c.nc, pool, w, warm); err != nil {
		return res, fmt.Errorf("bench: waitfor warm-up: %w", err)
	}
	for i := range o.Rounds {
		round := o
		round.Seed = o.Seed + uint64(i)*1000
		r, err := measureWaitFor(ctx, c.nc, pool, w, round)
		if err != nil {
			return res, err
		}
		fmt.Fprintf(o.Progress, "waitfor round %d: %d events at %.0f/s: WaitFor p50 %s p99 %s · derived p50 %s p99 %s\n",
			i+1, r.WaitFor.Events, r.WaitFor.Achieved, ms(r.WaitFor.P50), ms(r.WaitFor.P99), ms(r.Derived.P50), ms(r.Derived.P99))
		res.Rounds = append(res.Rounds, r)
	}
	return res, nil
}

// waited is one append and when its WaitFor returned.
type waited struct {
	pos      int64
	wallet   string
	at, done time.Time
}

func measureWaitFor(ctx context.Context, nc *nats.Conn, pool interface {
	eventstore.Executor
	eventstore.Querier
}, w *projector.Waiter, o WaitForOptions) (WaitForRound, error) {
	derived, sub, err := subscribeDerived(nc)
	if err != nil {
		return WaitForRound{}, err
	}
	defer sub.Unsubscribe() //nolint:errcheck

	total := int(float64(o.Rate) * o.Duration.Seconds())
	wctx, cancel := context.WithTimeout(ctx, o.Duration+deliveryTimeout)
	defer cancel()
	tokens := make(chan struct{}, total)
	var (
		rmu     sync.Mutex
		results []waited
		errs    []error
		waits   sync.WaitGroup
		writers sync.WaitGroup
	)
	for wr := range o.Writers {
		writers.Go(func() {
			d := newDomain(o.Seed + uint64(wr) + 1)
			ids := make([]string, 64)
			for i := range ids {
				ids[i] = "wait-" + d.walletID()
			}
			versions := make([]int64, len(ids))
			for range tokens {
				a := d.rng.IntN(len(ids))
				typ, payload := d.event(versions[a] + 1)
				res, err := eventstore.Append(wctx, pool, aggregateWallet, ids[a], versions[a],
					eventstore.NewEvent{Type: typ, Payload: json.RawMessage(payload)})
				at := time.Now()
				if err != nil {
					rmu.Lock()
					errs = append(errs, err)
					rmu.Unlock()
					cancel()
					return
				}
				versions[a] = res.Version
				waits.Go(func() {
					err := w.WaitFor(wctx, examples.WalletBalanceName, res.LastPosition)
					done := time.Now()
					rmu.Lock()
					defer rmu.Unlock()
					if err != nil {
						errs = append(errs, fmt.Errorf("bench: WaitFor %d: %w", res.LastPosition, err))
						return
					}
					results = append(results, waited{pos: res.LastPosition, wallet: ids[a], at: at, done: done})
				})
			}
		})
	}
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	for sent := 0; sent < total && wctx.Err() == nil; {
		for due := min(total, int(time.Since(start).Seconds()*float64(o.Rate))); sent < due; sent++ {
			tokens <- struct{}{}
		}
		select {
		case <-wctx.Done():
		case <-tick.C:
		}
	}
	tick.Stop()
	close(tokens)
	writers.Wait()
	elapsed := time.Since(start)
	waits.Wait()
	if err := errors.Join(errs...); err != nil {
		return WaitForRound{}, err
	}
	// The derived event covering each append.
	derivedAt := func(r waited) (time.Time, bool) { return derived.covering(r.wallet, r.pos) }
	deadline := time.Now().Add(deliveryTimeout)
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for {
		missing := 0
		for _, r := range results {
			if _, ok := derivedAt(r); !ok {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			return WaitForRound{}, fmt.Errorf("bench: %d of %d appends without a derived event within %v", missing, len(results), deliveryTimeout)
		}
		select {
		case <-ctx.Done():
			return WaitForRound{}, ctx.Err()
		case <-poll.C:
		}
	}
	toWait := make([]time.Duration, len(results))
	toDerived := make([]time.Duration, len(results))
	for i, r := range results {
		d, _ := derivedAt(r)
		toWait[i], toDerived[i] = r.done.Sub(r.at), d.Sub(r.at)
	}
	return WaitForRound{WaitFor: summarize(toWait, o.Rate, len(results), elapsed), Derived: summarize(toDerived, o.Rate, len(results), elapsed)}, nil
}

// Best is the round with the lowest WaitFor p99.
func (r WaitForResult) Best() WaitForRound {
	return slices.MinFunc(r.Rounds, func(a, b WaitForRound) int { return int(a.WaitFor.P99 - b.WaitFor.P99) })
}

// Summary is the benchmark's report.
func (r WaitForResult) Summary() string {
	if len(r.Rounds) == 0 {
		return "no rounds\n"
	}
	best := r.Best()
	var b strings.Builder
	fmt.Fprintf(&b, "append → WaitFor returns, wallet_balance (PostgreSQL), at %d ev/s (achieved %.0f), %d events, best of %d rounds:\n",
		best.WaitFor.Rate, best.WaitFor.Achieved, best.WaitFor.Events, len(r.Rounds))
	fmt.Fprintf(&b, "  WaitFor  p50 %s  p90 %s  p99 %s  max %s\n", ms(best.WaitFor.P50), ms(best.WaitFor.P90), ms(best.WaitFor.P99), ms(best.WaitFor.Max))
	fmt.Fprintf(&b, "  derived  p50 %s  p90 %s  p99 %s  max %s   (same appends, on project.wallet_balance.>)\n",
		ms(best.Derived.P50), ms(best.Derived.P90), ms(best.Derived.P99), ms(best.Derived.Max))
	return b.String()
}

// Markdown is the benchmark's table for docs/benchmarks.md.
func (r WaitForResult) Markdown(command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "`%s`\n\n| round | events | achieved ev/s | WaitFor p50 / p99 / max | derived p50 / p99 / max |\n|---|---|---|---|---|\n", command)
	for i, rd := range r.Rounds {
		fmt.Fprintf(&b, "| %d | %d | %.0f | %s / %s / %s | %s / %s / %s |\n", i+1, rd.WaitFor.Events, rd.WaitFor.Achieved,
			ms(rd.WaitFor.P50), ms(rd.WaitFor.P99), ms(rd.WaitFor.Max), ms(rd.Derived.P50), ms(rd.Derived.P99), ms(rd.Derived.Max))
	}
	return b.String()
}

// RunWaitForCommand is `bench waitfor`: it starts throwaway servers (as the
// pipeline benchmark does: a nats-server process and PostgreSQL with its
// default settings unless -embedded, -fsync-off) and runs WaitForLatency.
func RunWaitForCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("waitfor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o WaitForOptions
	fs.IntVar(&o.Rate, "rate", 1000, "append rate in events/s")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "duration of the appends of each round")
	fs.IntVar(&o.Writers, "writers", 4, "concurrent writers, each to its own 64 wallets")
	fs.IntVar(&o.Rounds, "rounds", 3, "measured rounds")
	markdown := fs.Bool("markdown", false, "also print a markdown table for docs/benchmarks.md")
	var so ServerOptions
	fs.BoolVar(&so.EmbeddedNATS, "embedded", false, "run NATS embedded in the benchmark's process (NoSync) instead of a nats-server process")
	fs.BoolVar(&so.FastPostgres, "fsync-off", false, "run PostgreSQL with fsync off instead of its default settings")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	o.Logger, o.Progress = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), stdout
	s, err := StartServersWith(ctx, so)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(stdout, "servers: %s\n", s.Target().Describe())
	res, err := WaitForLatency(ctx, s.Target(), o)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\n%s", res.Summary())
	if *markdown {
		fmt.Fprintf(stdout, "\n%s\n", res.Markdown("go run ./internal/cmd/bench waitfor "+strings.Join(args, " ")))
	}
	return nil
}
