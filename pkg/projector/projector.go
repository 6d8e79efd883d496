package projector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/internal/lease"
	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
)

// Options configure a Projector.
type Options struct {
	// Replica identifies this process in slot leases; default host-pid.
	Replica string
	// LeaseTTL of slot leases and membership (default 6s): a dead replica's
	// slots move within about LeaseTTL plus a third of it.
	LeaseTTL time.Duration
	// Replicas of the KV buckets and state stores the projector creates.
	Replicas int
	// Logger; nil discards.
	Logger *slog.Logger
	// Registerer receives metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Retries overrides, for every projection, what the projections set
	// with projection.Retries; zero fields keep theirs.
	Retries RetryPolicy

	// unpublishedLimit overrides maxUnpublishedTotal (tests).
	unpublishedLimit int
	// consumerCheck overrides consumerCheckEvery (tests).
	consumerCheck time.Duration
	// staleRegistry leaves the registry unwatched, so the local copy
	// keeps what the replica read at start (tests).
	staleRegistry bool
	// stuckAfter overrides stuckAfter (tests).
	stuckAfter time.Duration
}

// RetryPolicy is how failing partitions are retried: MaxAttempts before
// parking, the backoff doubling from BackoffMin up to BackoffMax.
type RetryPolicy struct {
	MaxAttempts            int
	BackoffMin, BackoffMax time.Duration
}

// apply overrides spec's retry settings with the policy's non-zero ones.
func (rp RetryPolicy) apply(spec projectionspec.Settings) projectionspec.Settings {
	if rp.MaxAttempts > 0 {
		spec.MaxAttempts = rp.MaxAttempts
	}
	if rp.BackoffMin > 0 {
		spec.BackoffMin = rp.BackoffMin
	}
	if rp.BackoffMax > 0 {
		spec.BackoffMax = rp.BackoffMax
	}
	spec.BackoffMax = max(spec.BackoffMax, spec.BackoffMin)
	return spec
}

// Projector runs projections.
type Projector struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	opts    Options
	defs    []*projection.Definition
	log     *slog.Logger
	metrics *metrics

	mu      sync.Mutex
	runners []*runner
}

// New checks every definition and builds a Projector.
func New(nc *nats.Conn, opts Options, defs ...projection.Definer) (*Projector, error) {
	if opts.Replica == "" {
		host, _ := os.Hostname()
		opts.Replica = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if opts.LeaseTTL == 0 {
		opts.LeaseTTL = 6 * time.Second
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return nil, err
	}
	var problems []error
	seen := map[string]bool{}
	p := &Projector{nc: nc, js: js, opts: opts, log: opts.Logger}
	for _, d := range defs {
		def := d.Def()
		if err := def.Validate(); err != nil {
			problems = append(problems, err)
		}
		if seen[def.Name()] {
			problems = append(problems, fmt.Errorf("projection %q defined twice", def.Name()))
		}
		seen[def.Name()] = true
		if st := projectionspec.Of(def).Settings().Store; st != nil {
			if _, ok := st.(StateStore); !ok {
				problems = append(problems, fmt.Errorf("projection %q: CustomStore(%T): not a projector.StateStore", def.Name(), st))
			}
		}
		p.defs = append(p.defs, def)
	}
	// One line each; errors.Is finds projection.ErrInvalid through it.
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}
	if p.metrics, err = newMetrics(opts.Registerer); err != nil {
		return nil, err
	}
	return p, nil
}

// StoreFor returns the state store a definition uses: PostgreSQL with its
// read model when it has a Postgres sink, otherwise a KV bucket.
func StoreFor(js jetstream.JetStream, d *projection.Definition, replicas int) StateStore {
	settings := projectionspec.Of(d).Settings()
	if s, ok := settings.Store.(StateStore); ok {
		return s
	}
	if pool := settings.Pool; pool != nil {
		return NewPGStore(pool, d.Name())
	}
	if pools := settings.TenantPools; len(pools) > 0 {
		return NewTenantStore(pools, d.Name())
	}
	return NewKVStore(js, contract.StateBucket(d.Name()), replicas)
}

// Run initialises the projections that are not yet and runs them all until
// ctx ends; it returns nil then.
func (p *Projector) Run(ctx context.Context) error {
	err := p.run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (p *Projector) run(ctx context.Context) error {
	reg, err := OpenRegistry(ctx, p.js, p.opts.Replicas)
	if err != nil {
		return err
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if !p.opts.staleRegistry {
		if err := reg.Watch(wctx); err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	wdctx, stopWatchdog := context.WithCancel(gctx)
	defer stopWatchdog()
	go p.watchLoops(wdctx, cmp.Or(p.opts.stuckAfter, stuckAfter))
	for _, d := range p.defs {
		// Initialising and opening what a projection needs talks to
		// JetStream many times; passing trouble (an election, a node
		// restarting) starts it over rather than ending the replica.
		r, err := jsretry.ValueSettling(ctx, "start projection "+d.Name(), func(ctx context.Context) (*runner, error) {
			return p.prepare(ctx, reg, d)
		})
		if err != nil {
			return err
		}
		if r == nil {
			continue
		}
		p.mu.Lock()
		p.runners = append(p.runners, r)
		p.mu.Unlock()
		g.Go(func() error { return r.run(gctx) })
	}
	return g.Wait()
}

// prepare initialises d if needed and builds its runner; nil when the
// projection was deleted and must be initialised again explicitly.
func (p *Projector) prepare(ctx context.Context, reg *Registry, def *projection.Definition) (*runner, error) {
	d := projectionspec.Of(def)
	e, ok, err := reg.Get(ctx, d.Name())
	if err != nil {
		return nil, err
	}
	if ok && e.State == StateDeleted {
		p.log.Warn("projection was deleted; run `projector init` to start it again", "projection", d.Name())
		return nil, nil
	}
	if !ok {
		if err := NewAdmin(p.js, AdminOptions{Replicas: p.opts.Replicas}).Init(ctx, def); err != nil {
			return nil, err
		}
		p.log.Info("projection initialised", "projection", d.Name())
		if e, ok, err = reg.Get(ctx, d.Name()); err != nil {
			return nil, err
		}
	}
	if ok {
		// The runner reads generation, replay bound and liveness from the
		// local copy; it must not start before the copy holds them.
		reg.remember(d.Name(), e)
	}
	source := d.CustomSource()
	if source == nil {
		s, err := NewJetStreamSource(ctx, p.js, d.SourceConfig().Stream, d.SourceConfig().Subjects)
		if err != nil {
			return nil, fmt.Errorf("projector: %s: %w", d.Name(), err)
		}
		s.Buffer = 2 * d.Settings().BatchSize
		source = s
	}
	leases, err := lease.EnsureBucket(ctx, p.js, contract.LeaseBucket(d.Name()), p.opts.LeaseTTL, p.opts.Replicas)
	if err != nil {
		return nil, err
	}
	store := StoreFor(p.js, def, p.opts.Replicas)
	if err := store.Init(ctx); err != nil {
		return nil, err
	}
	return &runner{
		def: d, spec: p.opts.Retries.apply(d.Settings()), store: store, js: p.js, nc: p.nc, source: source, parts_: d.Partitions(), leases: leases, reg: reg,
		replica: p.opts.Replica, ttl: p.opts.LeaseTTL, streamReplicas: p.opts.Replicas, metrics: p.metrics, eventPrefix: aggregatePrefix(d),
		log:    p.log.With("projection", d.Name()),
		status: RunnerStatus{Projection: d.Name(), Replica: p.opts.Replica}, unsentLimit: cmp.Or(p.opts.unpublishedLimit, maxUnpublishedTotal),
		consCheck: cmp.Or(p.opts.consumerCheck, consumerCheckEvery),
	}, nil
}

// Statuses reports what each runner of this process does.
func (p *Projector) Statuses() []RunnerStatus {
	p.mu.Lock()
	runners := append([]*runner(nil), p.runners...)
	p.mu.Unlock()
	out := make([]RunnerStatus, 0, len(runners))
	for _, r := range runners {
		r.mu.Lock()
		s := r.status
		s.Slots = append([]int(nil), s.Slots...)
		r.mu.Unlock()
		out = append(out, s)
	}
	return out
}

// Definitions returns the projections this projector runs.
func (p *Projector) Definitions() []*projection.Definition { return p.defs }

// aggregatePrefix is the subject prefix of an aggregate source ("events"),
// from which partitions' subjects are derived; empty for other sources.
func aggregatePrefix(d projectionspec.Spec) string {
	sc := d.SourceConfig()
	if len(sc.AggregateTypes) == 0 || len(sc.Subjects) == 0 || d.CustomSource() != nil {
		return ""
	}
	if _, ok := d.Partitions().(projection.AggregatePartitions); !ok {
		return ""
	}
	prefix, _, _ := strings.Cut(sc.Subjects[0], ".")
	return prefix
}
