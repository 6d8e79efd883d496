// Package emitter relays derived events from the projections' outbox
// (jetproj.outbox, written in the same transaction as the read model) to
// JetStream: each to its projection's own stream on project.<name>.>, and to
// the stream it is linked to, exactly once and in partition order.
//
// Exactly once does not rest on the duplicate window: every derived event
// carries its partition's generation and emission sequence (headers
// Projection-Generation and Emission-Seq). Before it publishes a
// partition's events for the first time, the emitter reads the last message
// on that partition's subject and skips what the stream already holds; it
// deletes outbox rows only after JetStream acknowledged them. A KV lease
// keeps one emitter active.
//
// A subject whose event JetStream refuses (a linked stream that cannot be
// created, a message over the stream's limit) stalls alone: its rows wait
// in the outbox, in order, and are tried again with a growing pause, while
// every other subject's rows go on (StalledError, metric
// jetproj_emitter_stalled_subjects).
package emitter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/jetproj/jetproj/pkg/derived"
	"github.com/jetproj/jetproj/pkg/lease"
	"github.com/jetproj/jetproj/pkg/opsserver"
	"github.com/jetproj/jetproj/pkg/projector"
	"github.com/jetproj/jetproj/pkg/tracing"
)

// Header names of derived events (package derived).
const (
	HeaderEventType      = derived.HeaderEventType
	HeaderProjection     = derived.HeaderProjection
	HeaderPartition      = derived.HeaderPartition
	HeaderGeneration     = derived.HeaderGeneration
	HeaderEmissionSeq    = derived.HeaderEmissionSeq
	HeaderSourcePosition = derived.HeaderSourcePosition
	HeaderSourceSequence = derived.HeaderSourceSequence
)

// Config configures the emitter.
type Config struct {
	Name         string        `env:"EMITTER_NAME" envDefault:"emitter" doc:"Lease key: one active emitter per name."`
	BatchSize    int           `env:"EMITTER_BATCH_SIZE" envDefault:"500" doc:"Outbox rows relayed per round."`
	PollInterval time.Duration `env:"EMITTER_POLL_INTERVAL" envDefault:"1s" doc:"Fallback poll when no notification arrives."`
	LeaseTTL     time.Duration `env:"EMITTER_LEASE_TTL" envDefault:"10s" doc:"Lease time to live: a standby takes over at most this long after the active emitter died."`
	Replicas     int           `env:"EMITTER_STREAM_REPLICAS" envDefault:"1" doc:"Replicas of the emitter's lease bucket and of the linked streams it creates."`
	Instance     string        `env:"EMITTER_INSTANCE" doc:"This instance's identity in the lease (default host-pid)."`
}

// Validate lists every problem.
func (c Config) Validate() []string {
	var p []string
	if c.BatchSize < 1 {
		p = append(p, fmt.Sprintf("EMITTER_BATCH_SIZE: %d: want at least 1", c.BatchSize))
	}
	if c.PollInterval < time.Millisecond {
		p = append(p, fmt.Sprintf("EMITTER_POLL_INTERVAL: %v: want at least 1ms", c.PollInterval))
	}
	if c.LeaseTTL < time.Second {
		p = append(p, fmt.Sprintf("EMITTER_LEASE_TTL: %v: want at least 1s", c.LeaseTTL))
	}
	if c.Name == "" {
		p = append(p, "EMITTER_NAME: must not be empty")
	}
	return p
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = "emitter"
	}
	if c.BatchSize == 0 {
		c.BatchSize = 500
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10 * time.Second
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Instance == "" {
		c.Instance = fmt.Sprintf("emitter-%d", time.Now().UnixNano())
	}
	return c
}

// Emitter relays the outbox.
type Emitter struct {
	cfg     Config
	pool    *pgxpool.Pool
	js      jetstream.JetStream
	log     *slog.Logger
	wake    chan struct{}
	emitted prometheus.Counter
	held    prometheus.Gauge
	stalled prometheus.Gauge
	busy    opsserver.Busy // a relay round in progress

	// marks is what each subject's stream holds: generation and emission
	// sequence of its last derived event.
	marks *derived.Tracker
	mu    sync.Mutex
	// acked are the ids of the last round's rows, published and
	// acknowledged: the next round deletes them.
	acked []int64
	// stalls are the subjects whose last attempt JetStream refused, and
	// readAt when the last round read the outbox. Only the relay touches
	// them.
	stalls map[string]*stall
	readAt time.Time
}

// stall is a subject whose derived event JetStream refused: its rows wait
// in the outbox until until, then are tried again.
type stall struct {
	until time.Time
	wait  time.Duration
}

// Pauses of a stalled subject.
const (
	stallFirst = 250 * time.Millisecond
	stallMax   = 30 * time.Second
)

// StalledError reports the subjects whose derived events JetStream refused
// in a round. The round relayed every other subject's rows; the stalled
// ones wait in the outbox and are tried again after a pause that grows
// from 250 ms to 30 s.
type StalledError struct {
	Subjects []string
	Err      error // the first refusal
}

func (e *StalledError) Error() string {
	return fmt.Sprintf("emitter: derived events of %d subject(s) held back (first %s): %v", len(e.Subjects), e.Subjects[0], e.Err)
}

func (e *StalledError) Unwrap() error { return e.Err }

// New builds an Emitter.
func New(cfg Config, pool *pgxpool.Pool, nc *nats.Conn, log *slog.Logger, reg prometheus.Registerer) (*Emitter, error) {
	cfg = cfg.withDefaults()
	if p := cfg.Validate(); len(p) > 0 {
		return nil, fmt.Errorf("emitter: invalid configuration:\n  %s", strings.Join(p, "\n  "))
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4*cfg.BatchSize), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Emitter{cfg: cfg, pool: pool, js: js, log: log, wake: make(chan struct{}, 1),
		emitted: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetproj_emitter_events_emitted_total", Help: "Derived events published."}),
		held:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetproj_emitter_lease_held", Help: "1 on the active emitter, 0 on a standby."}),
		stalled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetproj_emitter_stalled_subjects", Help: "Subjects whose derived events JetStream refused; their rows wait in the outbox."}),
		stalls:  map[string]*stall{}}
	e.marks = derived.NewTracker(js)
	if reg != nil {
		for _, c := range []prometheus.Collector{e.emitted, e.held, e.stalled} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return e, nil
}

// Run relays until ctx ends, while holding the emitter's lease.
func (e *Emitter) Run(ctx context.Context) error {
	kv, err := lease.EnsureBucket(ctx, e.js, "jetproj_emitter_leases", e.cfg.LeaseTTL, e.cfg.Replicas)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	err = lease.Run(ctx, kv, e.cfg.Name, e.cfg.Instance, lease.Options{Logger: e.log}, func(ctx context.Context, _ *lease.Lease) error {
		e.marks.Forget() // another emitter may have run meanwhile
		e.held.Set(1)
		defer e.held.Set(0)
		return e.relay(ctx)
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// BusySince is when the relay round in progress (reading the outbox,
// publishing, waiting for acknowledgements) started; zero while the emitter
// waits for rows, for a retry or for the lease. A liveness check
// (opsserver.NotWedged) reports the emitter wedged when it is too old.
func (e *Emitter) BusySince() time.Time { return e.busy.Since() }

func (e *Emitter) relay(ctx context.Context) error {
	defer e.busy.Stop()
	lctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { e.listen(lctx) })
	defer func() { stop(); wg.Wait() }()
	backoff := 100 * time.Millisecond
	for {
		e.busy.Start()
		n, err := e.RelayOnce(ctx)
		e.busy.Stop()
		if ctx.Err() != nil {
			return nil
		}
		if se := (*StalledError)(nil); errors.As(err, &se) {
			// The others went on: no pause for them.
			e.log.Warn("derived events held back; the others relayed", "subjects", len(se.Subjects), "first", se.Subjects[0], "error", se.Err)
			err = nil
		}
		if err != nil {
			e.log.Warn("relay interrupted; retrying", "error", err, "in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if n > 0 {
			// Straight on: the next round deletes this one's rows with
			// its read, and picks up what arrived meanwhile.
			continue
		}
		t := time.NewTimer(e.idleWait(time.Now()))
		select {
		case <-ctx.Done():
		case <-e.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

func (e *Emitter) listen(ctx context.Context) {
	for ctx.Err() == nil {
		conn, err := e.pool.Acquire(ctx)
		if err == nil {
			_, err = conn.Exec(ctx, "LISTEN jetproj_outbox")
			if err == nil {
				e.poke()
				for err == nil {
					_, err = conn.Conn().WaitForNotification(ctx)
					e.poke()
				}
			}
			if ctx.Err() != nil {
				_ = conn.Conn().Close(context.Background())
			}
			conn.Release()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (e *Emitter) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// row is an outbox row: a derived event and its id.
type row struct {
	id int64
	derived.Event
}

// idleWait is how long the relay may wait for a notification: the poll
// interval, or less when a stalled subject is due before. A subject that
// was due when the last round read the outbox was read by it; one that
// came due since is read at once.
func (e *Emitter) idleWait(now time.Time) time.Duration {
	wait := e.cfg.PollInterval
	for _, s := range e.stalls {
		if s.until.After(e.readAt) {
			wait = min(wait, max(s.until.Sub(now), 0))
		}
	}
	return wait
}

// RelayOnce publishes one round of outbox rows. The rows of the previous
// round, acknowledged by JetStream, are deleted by this round's read, in
// the same statement: a round costs one round trip to PostgreSQL. A round
// that reads nothing therefore still deletes; it returns how many rows it
// relayed. Rows of a subject JetStream refuses stay in the outbox, the
// subject stalls (*StalledError) and the others are relayed. A round that
// fails as a whole forgets what it knew of the streams: the next reads them
// again. RelayOnce is not safe for concurrent use.
func (e *Emitter) RelayOnce(ctx context.Context) (int, error) {
	n, err := e.relayOnce(ctx)
	if se := (*StalledError)(nil); err != nil && !errors.As(err, &se) {
		e.marks.Forget()
	}
	e.stalled.Set(float64(len(e.stalls)))
	return n, err
}

// stalledNow lists the subjects still paused at now, and forgets those
// whose pause ended long ago without their rows coming back (a deleted
// projection's, say).
func (e *Emitter) stalledNow(now time.Time) []string {
	subjs := []string{}
	for subj, s := range e.stalls {
		switch {
		case now.Before(s.until):
			subjs = append(subjs, subj)
		case now.Sub(s.until) > stallMax:
			delete(e.stalls, subj)
		}
	}
	return subjs
}

func (e *Emitter) relayOnce(ctx context.Context) (int, error) {
	e.mu.Lock()
	acked := e.acked
	e.mu.Unlock()
	if acked == nil {
		acked = []int64{}
	}
	// Stalled subjects' rows are left where they are: their order is kept
	// and they do not take the round's room.
	now := time.Now()
	e.readAt = now
	rows, err := e.pool.Query(ctx, `WITH relayed AS (DELETE FROM jetproj.outbox WHERE id = ANY($2))
SELECT id, projection, partition, subject, msg_id, generation, emit_seq, event_type, payload::text,
       link_to, source_seq, source_position, traceparent FROM jetproj.outbox
 WHERE NOT id = ANY($2) AND NOT subject = ANY($3) ORDER BY id LIMIT $1`, e.cfg.BatchSize, acked, e.stalledNow(now))
	if err != nil {
		return 0, fmt.Errorf("emitter: read outbox: %w", err)
	}
	var batch []row
	for rows.Next() {
		var r row
		var seq, sseq int64
		var payload string
		if err := rows.Scan(&r.id, &r.Projection, &r.Partition, &r.Subject, &r.MsgID, &r.Generation, &seq, &r.Type, &payload,
			&r.LinkTo, &sseq, &r.SourcePosition, &r.TraceParent); err != nil {
			rows.Close()
			return 0, err
		}
		r.Seq, r.SourceSeq, r.Payload = uint64(seq), uint64(sseq), []byte(payload)
		batch = append(batch, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("emitter: read outbox: %w", err)
	}
	e.mu.Lock()
	e.acked = nil // deleted
	e.mu.Unlock()
	if len(batch) == 0 {
		return 0, nil
	}
	if err := e.prefetchMarks(ctx, batch); err != nil {
		return 0, err
	}
	// A subject's rows go out one per wave, each wave acknowledged before
	// the next: were two of one subject in flight together, the first could
	// fail while the second lands, and the stream's last mark would then
	// hide the first from every later round.
	var waves [][]row
	depth := map[string]int{}
	for _, r := range batch {
		w := depth[r.Subject]
		depth[r.Subject]++
		if w == len(waves) {
			waves = append(waves, nil)
		}
		waves[w] = append(waves[w], r)
	}
	var done []int64
	var gone []string
	// refused holds the subjects JetStream refused this round, and
	// targets every subject a refused row went to: their marks are read
	// again next time (a refused publish may have landed after all).
	refused := map[string]error{}
	var order []string
	targets := map[string][]string{}
	refuse := func(subj string, err error) {
		if _, ok := refused[subj]; !ok {
			refused[subj] = err
			order = append(order, subj)
		}
	}
	for _, wave := range waves {
		var pend []pending
		var sent []row
		for _, r := range wave {
			if _, ok := refused[r.Subject]; ok {
				continue // its earlier row was refused: keep the order
			}
			to := []struct{ stream, subj string }{{projector.OwnStream(r.Projection), r.Subject}}
			if r.LinkTo != "" {
				ls, lsubj, err := e.marks.Link(ctx, r.LinkTo, r.Subject, e.cfg.Replicas)
				if err != nil {
					refuse(r.Subject, err)
					continue
				}
				to = append(to, struct{ stream, subj string }{ls, lsubj})
			}
			m := r.Mark()
			dropped := false
			for _, t := range to {
				targets[r.Subject] = append(targets[r.Subject], t.subj)
				last, err := e.marks.Last(ctx, t.stream, t.subj)
				if errors.Is(err, jetstream.ErrStreamNotFound) && t.stream == to[0].stream {
					gone = append(gone, r.Projection) // deleted projection: drop its rows, links too
					dropped = true
					break
				}
				// A linked stream removed since it was ensured is created
				// again next time: Last forgets it was ensured.
				if err != nil {
					refuse(r.Subject, err)
					break
				}
				if !last.Before(m) {
					continue // the stream holds it already
				}
				msg := r.Msg(t.subj)
				// The derived event continues its source event's trace.
				_, span, tp := tracing.Start(ctx, r.TraceParent, "jetproj.emitter publish "+r.Projection, trace.SpanKindProducer,
					attribute.String("messaging.destination.name", t.subj))
				if tp != "" {
					msg.Header.Set(tracing.Header, tp)
				}
				span.End()
				fut, err := e.js.PublishMsgAsync(msg)
				if err != nil {
					refuse(r.Subject, fmt.Errorf("publish %s: %w", t.subj, err))
					break
				}
				pend = append(pend, pending{r.Subject, t.subj, m, fut})
			}
			if dropped {
				done = append(done, r.id)
			} else {
				sent = append(sent, r)
			}
		}
		for _, p := range pend {
			select {
			case <-p.fut.Ok():
				e.emitted.Inc()
				e.marks.Set(p.target, p.mark)
			case err := <-p.fut.Err():
				refuse(p.row, fmt.Errorf("publish %s: %w", p.target, err))
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		for _, r := range sent {
			if _, ok := refused[r.Subject]; !ok {
				done = append(done, r.id)
				delete(e.stalls, r.Subject) // flowing again
			}
		}
	}
	e.mu.Lock()
	e.acked = done // deleted by the next round
	e.mu.Unlock()
	if len(gone) > 0 {
		e.log.Warn("dropped derived events of projections without a stream (deleted?)", "projections", gone)
	}
	if len(order) == 0 {
		return len(done), nil
	}
	for _, subj := range order {
		e.marks.Drop(targets[subj]...)
		s := e.stalls[subj]
		if s == nil {
			s = &stall{wait: stallFirst}
			e.stalls[subj] = s
		} else {
			s.wait = min(2*s.wait, stallMax)
		}
		s.until = now.Add(s.wait)
	}
	if len(done) == 0 && allTransient(refused) {
		// Nothing went through and nothing was refused for a reason of its
		// own: JetStream is probably unreachable or overloaded, the relay's
		// trouble, so it pauses as a whole. The subjects stall all the same:
		// should only they be in trouble, the next round reads the others.
		return 0, fmt.Errorf("emitter: %d subjects not relayed, the first %s: %w", len(order), order[0], refused[order[0]])
	}
	return len(done), &StalledError{Subjects: order, Err: refused[order[0]]}
}

// allTransient reports whether every refusal is one that says nothing of
// its event: a timeout, a lost connection, no answer.
func allTransient(refused map[string]error) bool {
	for _, err := range refused {
		switch {
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
			errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrConnectionClosed),
			errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting),
			errors.Is(err, jetstream.ErrAsyncPublishTimeout), errors.Is(err, jetstream.ErrNoStreamResponse),
			errors.Is(err, jetstream.ErrTooManyStalledMsgs):
		default:
			return false
		}
	}
	return true
}

// pending is a derived event on its way to a stream.
type pending struct {
	row    string // the row's own subject
	target string
	mark   derived.Mark
	fut    jetstream.PubAckFuture
}

// prefetchMarks reads, concurrently, what the own streams hold on the
// subjects of batch that the emitter has not seen yet, so that a batch over
// many new partitions costs a few round trips rather than one per
// partition. Linked subjects are read in the relay loop.
func (e *Emitter) prefetchMarks(ctx context.Context, batch []row) error {
	type key struct{ stream, subj string }
	var todo []key
	seen := map[string]bool{}
	for _, r := range batch {
		if !seen[r.Subject] && !e.marks.Known(r.Subject) {
			seen[r.Subject] = true
			todo = append(todo, key{projector.OwnStream(r.Projection), r.Subject})
		}
	}
	if len(todo) < 2 {
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, k := range todo {
		g.Go(func() error {
			_, err := e.marks.Last(gctx, k.stream, k.subj)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil // the relay loop drops the rows of a deleted projection
			}
			return err
		})
	}
	return g.Wait()
}
