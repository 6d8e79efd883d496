package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jetproj/jetproj/pkg/projection"
)

// Kinds of projection in the replica part.
const (
	kindPartitioned = "partitioned"
	kindGlobal      = "global"
)

// spreadTimeout bounds the wait for replicas to share the slots.
const spreadTimeout = time.Minute

// ScaleRun is one run of the replica part: a projection of Kind on Replicas
// replicas draining a backlog. Spread is how long the replicas took to
// share the slots before the backlog was published (not part of Run).
type ScaleRun struct {
	Kind     string
	Replicas int
	Run
	Spread time.Duration
	// MaxShare is the largest share of the partitions one replica held
	// (partitioned runs): the hash of the keys into slots decides it, and
	// it bounds the speed-up to 1/MaxShare.
	MaxShare float64
}

// replicas runs the I/O-bound projection partitioned with each replica
// count, then global with the fewest and the most.
func (b *projectorBench) replicas(ctx context.Context, res *ProjectorResult) error {
	o := b.o
	type config struct {
		kind string
		n    int
	}
	var configs []config
	for _, n := range o.Replicas {
		configs = append(configs, config{kindPartitioned, n})
	}
	lo, hi := slices.Min(o.Replicas), slices.Max(o.Replicas)
	configs = append(configs, config{kindGlobal, lo})
	if hi != lo {
		configs = append(configs, config{kindGlobal, hi})
	}
	for _, c := range configs {
		run, err := profiled(o.CPUProfileDir, fmt.Sprintf("replicas-%s-%d.pprof", c.kind, c.n), func() (ScaleRun, error) {
			return b.scaleRun(ctx, c.kind, c.n)
		})
		if err != nil {
			return fmt.Errorf("replicas %s %d: %w", c.kind, c.n, err)
		}
		res.Scale = append(res.Scale, run)
		share := ""
		if run.MaxShare > 0 {
			share = fmt.Sprintf("; largest replica share %.1f%% of the wallets", 100*run.MaxShare)
		}
		fmt.Fprintf(b.out, "replicas  %-11s ×%d  %s  (slots shared after %v%s)\n", c.kind, c.n, runLine(run.Run), run.Spread.Round(time.Millisecond), share)
	}
	return nil
}

// scaleRun starts n replicas of a fresh projection of kind whose handler
// waits o.HandlerDelay per event, over wallets of an aggregate type of its
// own (so that it reads nothing else). Once the replicas have shared the
// slots (each holds its share and runs; for a global projection one holds
// the slot and the others stand by), it publishes the backlog; the clock
// runs from the first publish until every replica holding slots reports
// the last sequence as processed and the handlers have seen every event.
func (b *projectorBench) scaleRun(ctx context.Context, kind string, n int) (ScaleRun, error) {
	o := b.o
	name := fmt.Sprintf("bench_%s_%d", kind, n)
	want := o.ScaleAggregates * o.ScaleEvents
	evs := walletEvents(o.Seed+uint64(len(name)+n), name, o.ScaleAggregates, want, b.nextPos)
	b.nextPos += int64(want)
	sr := ScaleRun{Kind: kind, Replicas: n}

	var handled atomic.Int64
	var opts []projection.Option
	if kind == kindGlobal {
		opts = append(opts, projection.Global())
	}
	var reps []*replica
	defer func() { _ = stopAll(reps) }() // after an error; stopping twice is harmless
	for i := 1; i <= n; i++ {
		def := walletProjection(name, name, &handled, o.HandlerDelay, opts...)
		r, err := startReplica(ctx, b.t, fmt.Sprintf("%s-r%d", name, i), o.LeaseTTL, o.Logger, def)
		if err != nil {
			return sr, err
		}
		reps = append(reps, r)
	}

	slots := 64
	if kind == kindGlobal {
		slots = 1
	}
	share := (slots + n - 1) / n
	began := time.Now()
	sctx, cancel := context.WithTimeout(ctx, spreadTimeout)
	var shares []string
	err := pollReplicas(sctx, reps, func() bool {
		shares = shares[:0]
		total, ok := 0, true
		for _, r := range reps {
			st := r.p.Statuses()
			if len(st) == 0 {
				shares = append(shares, "?")
				ok = false
				continue
			}
			s := st[0]
			shares = append(shares, fmt.Sprintf("%d %s", len(s.Slots), s.State))
			total += len(s.Slots)
			switch {
			case len(s.Slots) == 0 && kind == kindGlobal:
				ok = ok && s.State == "standby"
			case len(s.Slots) == 0 || len(s.Slots) > share || s.State != "running":
				ok = false
			}
		}
		return ok && total == slots
	})
	cancel()
	if err != nil {
		return sr, fmt.Errorf("slots not shared within %v (%s): %w", spreadTimeout, strings.Join(shares, ", "), err)
	}
	sr.Spread = time.Since(began)

	start := time.Now()
	if _, err := publishEvents(ctx, b.t, evs); err != nil {
		return sr, err
	}
	last, err := streamLastSeq(ctx, b.js, eventsStream)
	if err != nil {
		return sr, err
	}
	err = pollReplicas(ctx, reps, func() bool {
		if handled.Load() < int64(want) {
			return false
		}
		for _, r := range reps {
			if s := r.p.Statuses()[0]; len(s.Slots) > 0 && s.Processed < last {
				return false
			}
		}
		return true
	})
	sr.Run = Run{Events: want, Elapsed: time.Since(start)}
	if err != nil {
		return sr, err
	}
	if kind == kindPartitioned {
		for _, r := range reps {
			sr.MaxShare = max(sr.MaxShare, float64(r.p.Statuses()[0].Partitions)/float64(o.ScaleAggregates))
		}
	}
	if err := stopAll(reps); err != nil {
		return sr, err
	}
	if got := handled.Load(); got != int64(want) {
		return sr, fmt.Errorf("bench: handlers saw %d events, want %d", got, want)
	}
	return sr, dropProjection(ctx, b.js, name)
}
