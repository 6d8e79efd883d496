package feeder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/internal/lease"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/tracing"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/subject"
)

// Log keys.
const (
	logFeeder   = "feeder"
	logPosition = "position"
	logCursor   = "cursor"
	logError    = "error"
)

// Deps are the clients a Feeder uses. Pool and NC are required.
type Deps struct {
	Pool   *pgxpool.Pool
	NC     *nats.Conn
	Logger *slog.Logger
	// Registerer receives the feeder's metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// Feeder publishes the event store to JetStream. Create it with New, run it
// with Run.
type Feeder struct {
	cfg     Config
	pool    *pgxpool.Pool
	nc      *nats.Conn
	js      jetstream.JetStream
	log     *slog.Logger
	metrics *metrics
	filter  eventstore.Filter
	wake    chan struct{}
	state   jetstream.KeyValue // checkpoints and status
	busy    opsserver.Busy     // a step of the feeding loop in progress

	mu     sync.Mutex
	status Status
	cursor eventstore.Cursor // where the acknowledged events end
}

// New checks cfg (with defaults applied) and builds a Feeder.
func New(cfg Config, deps Deps) (*Feeder, error) {
	cfg = cfg.Defaults()
	if p := cfg.Validate(); len(p) > 0 {
		return nil, fmt.Errorf("feeder: %w", &config.Error{Problems: p})
	}
	if deps.Pool == nil || deps.NC == nil {
		return nil, errors.New("feeder: Deps.Pool and Deps.NC are required")
	}
	js, err := jetstream.New(deps.NC,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxPending),
		jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("feeder: jetstream: %w", err)
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(deps.Registerer, cfg.Name)
	if err != nil {
		return nil, err
	}
	f := &Feeder{
		cfg: cfg, pool: deps.Pool, nc: deps.NC, js: js, metrics: m,
		log:    log.With(logFeeder, cfg.Name),
		wake:   make(chan struct{}, 1),
		status: Status{Name: cfg.Name, Stream: cfg.Stream, State: StateStarting},
	}
	f.filter.AggregateTypes = cfg.AggregateTypes
	for _, g := range cfg.EventTypes {
		f.filter.EventTypeLike = append(f.filter.EventTypeLike, eventstore.GlobToLike(g))
	}
	return f, nil
}

// Config returns the configuration in use, defaults applied.
func (f *Feeder) Config() Config { return f.cfg }

// BusySince is when the step the feeding loop works on (reading a page,
// publishing it, waiting for its acknowledgements) started; zero while it
// waits for new events, for a retry or for the lease. A liveness check
// (opsserver.NotWedged) reports the feeder wedged when it is too old.
func (f *Feeder) BusySince() time.Time { return f.busy.Since() }

// Run feeds until ctx is done. It waits as a standby while another instance
// holds the feeder's lease, and feeds while it holds it. Errors that a retry
// can cure (PostgreSQL or NATS restarting) are logged and retried with
// backoff; Run returns nil when ctx is cancelled, or an error it cannot
// recover from (such as a stream whose configuration differs).
func (f *Feeder) Run(ctx context.Context) error {
	leases, err := lease.EnsureBucket(ctx, f.js, f.cfg.LeaseBucket, f.cfg.LeaseTTL, f.cfg.StreamReplicas)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return fmt.Errorf("feeder: lease bucket: %w", err)
	}
	if f.state, err = jsretry.ValueSettling(ctx, "feeder state bucket "+f.cfg.StateBucket, f.stateKV); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	f.setState(StateStandby, nil)
	err = lease.Run(ctx, leases, f.cfg.Name, f.cfg.Instance, lease.Options{
		Logger: f.log,
		OnState: func(held bool) {
			f.metrics.active.Set(b2f(held))
			if !held {
				f.setState(StateStandby, nil)
			}
		},
	}, func(ctx context.Context, _ *lease.Lease) error { return f.feed(ctx) })
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// stallRetry is how long a feeder stopped at an oversized event waits before
// it tries the event again (the server's max payload may have been raised).
var stallRetry = 30 * time.Second

// feed runs sessions while the lease is held. It returns nil when ctx ends
// and an error only for what retrying cannot cure.
func (f *Feeder) feed(ctx context.Context) error {
	f.busy.Start()
	defer f.busy.Stop()
	stream, res, err := EnsureStream(ctx, f.js, f.cfg)
	if err != nil {
		f.setState(StateFailed, err)
		return err
	}
	switch {
	case res.Created:
		f.log.Info("stream created", "stream", f.cfg.Stream)
	case len(res.Updated) > 0:
		f.log.Warn("stream configuration updated", "stream", f.cfg.Stream, "changes", strings.Join(res.Updated, "; "))
	}
	if owner := streamOwner(stream.CachedInfo().Config.Description); owner != "" && owner != f.cfg.Name {
		err := fmt.Errorf("feeder: stream %s is fed by feeder %q; each feeder needs its own stream", f.cfg.Stream, owner)
		f.setState(StateFailed, err)
		return err
	}

	lctx, stopListen := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { f.listen(lctx) })
	defer func() { stopListen(); wg.Wait() }()

	backoff := 100 * time.Millisecond
	for {
		began := time.Now()
		err := f.session(ctx, stream)
		if time.Since(began) > sessionSettled {
			backoff = 100 * time.Millisecond // a new episode
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errResume) {
			continue // an event was dead-lettered: resume after it at once
		}
		var over *OversizedError
		wait := backoff
		if errors.As(err, &over) {
			f.setState(StateStalled, over)
			f.saveStatus(ctx)
			if over.MaxMsgSize > 0 {
				f.log.Error("feeder stopped at an event larger than the stream's max_msg_size; raise it or set FEEDER_ON_OVERSIZED=dead-letter",
					logPosition, over.Position, "aggregate_type", over.AggregateType, "aggregate_id", over.AggregateID,
					"event_type", over.EventType, "size", over.Size, "stream", over.Stream, "max_msg_size", over.MaxMsgSize)
			} else {
				f.log.Error("feeder stopped at an event larger than the server's max payload; raise max_payload or set FEEDER_ON_OVERSIZED=dead-letter",
					logPosition, over.Position, "aggregate_type", over.AggregateType, "aggregate_id", over.AggregateID,
					"event_type", over.EventType, "size", over.Size, "max_payload", over.MaxPayload)
			}
			wait = stallRetry
		} else {
			f.metrics.errors.Inc()
			f.setState(StateRetrying, err)
			f.log.Warn("feeding interrupted; retrying", logError, err, "in", backoff)
			backoff = min(backoff*2, 5*time.Second)
		}
		f.busy.Stop()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		f.busy.Start()
	}
}

const (
	// startRequestTimeout bounds the requests that find where a session
	// resumes.
	startRequestTimeout = 2 * time.Second
	// sessionSettled: a session that lasted longer ended a new episode of
	// trouble, whose retries start again from the shortest wait.
	sessionSettled = 10 * time.Second
)

const ownerPrefix = "jetproj events fed from eventstore.events by feeder "

func streamOwner(desc string) string {
	owner, ok := strings.CutPrefix(desc, ownerPrefix)
	if !ok {
		return ""
	}
	return owner
}

// listen wakes the feeder on every insert notification. It reconnects when
// PostgreSQL goes away and wakes the feeder after reconnecting, in case a
// notification was missed.
func (f *Feeder) listen(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := f.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		f.log.Debug("notification listener reconnecting", logError, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

func (f *Feeder) listenOnce(ctx context.Context) error {
	conn, err := f.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN eventstore_events"); err != nil {
		return err
	}
	// Hijack-free: the connection is released with LISTEN still active on
	// error paths, so make sure it is unlistened or closed.
	defer func() {
		if ctx.Err() != nil || conn.Conn().IsClosed() {
			return
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, "UNLISTEN *"); err != nil {
			_ = conn.Conn().Close(uctx)
		}
	}()
	f.poke()
	for {
		if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
			if ctx.Err() != nil {
				_ = conn.Conn().Close(context.Background())
			}
			return err
		}
		f.poke()
	}
}

func (f *Feeder) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// pending is a publish awaiting its acknowledgement, or (fut nil) a marker
// that the rows up to cur were scanned.
type pending struct {
	fut  jetstream.PubAckFuture
	cur  eventstore.Cursor
	pos  int64
	size int64             // the message's bytes, counted in flight
	ev   *eventstore.Event // the event, to name it if the stream refuses it
}

// readPage is the outcome of a read-ahead.
type readPage struct {
	page eventstore.Page
	lim  eventstore.PageLimits
	err  error
}

// errResume ends a session that must start again at once from the stream
// and the checkpoint (after an event was dead-lettered behind publishes in
// flight).
var errResume = errors.New("feeder: resume after a dead-lettered event")

// session resolves where the stream ends and feeds from there until ctx
// ends or something fails.
func (f *Feeder) session(ctx context.Context, stream jetstream.Stream) error {
	start, err := f.resolveStart(ctx, stream)
	if err != nil {
		return err
	}
	f.log.Info("feeding", logCursor, start.Cursor.String(), "stream_seq", start.StreamSeq)
	var (
		cur       = start.Cursor // next read starts after it
		seq       = start.StreamSeq
		acked     = start
		high      = start.Cursor.Position // the highest position acknowledged
		queue     []pending
		inflight  int64 // bytes of the publishes in queue
		broken    bool  // a publish failed: nothing after it may be acknowledged
		lastSaved = time.Now()
		idleWait  = 500 * time.Microsecond
		// The page's row limit: FEEDER_BATCH_SIZE, lowered while pages
		// are cut by FEEDER_PAGE_BYTES (so PostgreSQL does not measure
		// many rows that will not be sent), raised again when not.
		lim = eventstore.PageLimits{Rows: f.cfg.BatchSize, Bytes: f.cfg.PageBytes}
	)
	if h, err := eventstore.Highest(ctx, f.pool, start.Cursor); err == nil {
		high = h
	} else {
		f.log.Warn("highest position published not read; the status shows the cursor's", logError, err)
	}
	f.setProgress(acked, high, StateFeeding)

	pop := func() {
		inflight -= queue[0].size
		queue = queue[1:]
	}
	// failed records a publish that failed: every later one fails too
	// (its expected sequence is wrong), and no marker after it may move
	// the acknowledged cursor past it.
	failed := func(p pending, err error) error {
		pop() // its outcome is consumed
		broken = true
		f.metrics.inflight.Set(float64(inflight))
		return f.publishError(ctx, stream, p, err)
	}
	// settle pops acknowledged publishes from the head of the queue; while
	// block() holds (nil: never) it waits for the head. It returns the
	// first failure.
	settle := func(block func() bool) error {
		if broken {
			return errors.New("feeder: an earlier publish failed")
		}
		defer func() { f.metrics.inflight.Set(float64(inflight)) }()
		for len(queue) > 0 {
			p := queue[0]
			if p.fut != nil {
				var ack *jetstream.PubAck
				select {
				case ack = <-p.fut.Ok():
				case err := <-p.fut.Err():
					return failed(p, err)
				default:
					if block == nil || !block() {
						return nil
					}
					select {
					case ack = <-p.fut.Ok():
					case err := <-p.fut.Err():
						return failed(p, err)
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				acked.StreamSeq = ack.Sequence
				f.metrics.published.Inc()
			}
			if p.pos > high {
				high = p.pos
				f.metrics.position.Set(float64(high))
			}
			acked.Cursor = p.cur
			pop()
		}
		return nil
	}
	all := func() bool { return true }
	// save records the checkpoint and status, unless nothing changed since
	// the last time: an idle feeder writes nothing.
	savedCk, savedState := Checkpoint{}, ""
	save := func() {
		st := f.Status().State
		if acked == savedCk && st == savedState {
			return
		}
		if err := f.saveCheckpoint(context.WithoutCancel(ctx), acked); err != nil {
			f.log.Warn("checkpoint not saved", logError, err)
			return
		}
		savedCk, savedState, lastSaved = acked, st, time.Now()
	}
	// drain waits for every publish in flight, so that nothing lands after
	// the session ended, and records the checkpoint.
	drain := func(force bool) error {
		err := settle(all)
		if err != nil {
			// Later publishes fail on the sequence expectation; wait for
			// them so the next session sees the final stream.
			for _, p := range queue {
				if p.fut != nil {
					select {
					case <-p.fut.Ok():
					case <-p.fut.Err():
					case <-time.After(15 * time.Second):
					}
				}
			}
			queue, inflight = nil, 0
			f.metrics.inflight.Set(0)
		}
		f.setProgress(acked, high, "")
		if force || err != nil || (acked != savedCk && time.Since(lastSaved) > time.Second) {
			save()
		}
		return err
	}
	// fail ends the session with err after draining. An event the stream
	// refused for its size is dead-lettered here when so configured: every
	// publish before it was acknowledged and none after it landed, so the
	// checkpoint moves just past it and the next session resumes there.
	fail := func(err error) error {
		wasBroken := broken
		if derr := drain(true); derr != nil && !wasBroken {
			err = errors.Join(err, derr)
		}
		var refused *refusedError
		if !errors.As(err, &refused) {
			return err
		}
		f.metrics.oversized.Inc()
		if f.cfg.OnOversized != OversizedDeadLetter {
			return refused.over
		}
		if err := f.deadLetter(ctx, *refused.ev, refused.over); err != nil {
			return err
		}
		acked.Cursor = refused.ev.Cursor()
		if err := f.saveCheckpoint(context.WithoutCancel(ctx), acked); err != nil {
			return fmt.Errorf("feeder: checkpoint after dead-lettering event %d: %w", refused.ev.Position, err)
		}
		return errResume
	}

	// While a full page is published, the next one is read (read-ahead):
	// PostgreSQL works on it while the client builds and sends messages.
	// The read starts after the page's last row, as the next read would; a
	// read taken earlier sees a horizon no later than that read would, so it
	// returns a prefix of what that read would, never a row past a gap.
	// Pages are capped by rows and by bytes (FEEDER_PAGE_BYTES); the
	// feeder holds at most this page, the one read ahead and
	// FEEDER_PAGE_BYTES of publishes in flight.
	rctx, stopReads := context.WithCancel(ctx)
	var ahead chan readPage // a read-ahead in flight, or nil
	defer func() {
		stopReads()
		if ahead != nil {
			<-ahead
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			_ = drain(true)
			return err
		}
		var (
			page eventstore.Page
			read = lim
			err  error
		)
		if ahead != nil {
			p := <-ahead
			ahead = nil
			page, read, err = p.page, p.lim, p.err
		} else {
			page, err = eventstore.ReadCommittedPage(ctx, f.pool, cur, lim, f.filter)
		}
		evs, scanned := page.Events, page.Scanned
		if err == nil && len(evs) > 0 {
			f.metrics.pageBytes.Observe(float64(page.Bytes))
		}
		switch {
		case err != nil:
		case page.Cut:
			lim.Rows = min(f.cfg.BatchSize, max(2, 2*page.Rows))
		case page.Rows >= read.Rows:
			lim.Rows = min(f.cfg.BatchSize, 2*read.Rows)
		}
		// A full page may have more behind it; a page that is neither full
		// nor cut by bytes is the end of what is below the horizon now.
		more := err == nil && scanned != cur && page.More(read)
		if more {
			ahead = make(chan readPage, 1)
			go func(ch chan<- readPage, from eventstore.Cursor, lim eventstore.PageLimits) {
				p, err := eventstore.ReadCommittedPage(rctx, f.pool, from, lim, f.filter)
				ch <- readPage{page: p, lim: lim, err: err}
			}(ahead, scanned, lim)
		}
		if err != nil {
			return fail(err)
		}
		for i := range evs {
			e := &evs[i]
			// Sequence fencing: the stream refuses the message unless its
			// last sequence is seq, so a second feeder (or a lost lease)
			// cannot interleave.
			msg, err := eventmsg.NewFenced(f.cfg.SubjectPrefix, *e, seq)
			if err != nil {
				return fail(fmt.Errorf("feeder: event %d: %w", e.Position, err))
			}
			// The message continues the trace of the append, if any.
			if tp := msg.Header.Get(contract.HeaderTraceParent); tp != "" {
				_, span, child := tracing.Start(ctx, tp, "jetproj.feeder publish", trace.SpanKindProducer,
					attribute.String("messaging.destination.name", msg.Subject), attribute.Int64("jetproj.position", e.Position))
				msg.Header.Set(contract.HeaderTraceParent, child)
				span.End()
			}
			fut, err := f.js.PublishMsgAsync(msg)
			if errors.Is(err, nats.ErrMaxPayload) {
				if derr := drain(true); derr != nil {
					return fail(derr)
				}
				over := &OversizedError{Position: e.Position, AggregateType: e.AggregateType, AggregateID: e.AggregateID,
					EventType: e.Type, Size: msgSize(msg), MaxPayload: f.nc.MaxPayload()}
				f.metrics.oversized.Inc()
				if f.cfg.OnOversized != OversizedDeadLetter {
					return over
				}
				if err := f.deadLetter(ctx, *e, over); err != nil {
					return err
				}
				queue = append(queue, pending{cur: e.Cursor(), pos: e.Position})
				continue
			}
			if err != nil {
				return fail(fmt.Errorf("feeder: publish event %d: %w", e.Position, err))
			}
			seq++
			size := msgSize(msg)
			queue = append(queue, pending{fut: fut, cur: e.Cursor(), pos: e.Position, size: size, ev: e})
			inflight += size
			switch {
			case len(queue) >= f.cfg.MaxPending:
				if err := settle(all); err != nil {
					return fail(err)
				}
			case inflight > f.cfg.PageBytes:
				// Wait until half the byte budget is acknowledged.
				if err := settle(func() bool { return inflight > f.cfg.PageBytes/2 }); err != nil {
					return fail(err)
				}
			}
		}
		f.metrics.inflight.Set(float64(inflight))
		progressed := scanned != cur
		if progressed {
			queue = append(queue, pending{cur: scanned, pos: scanned.Position})
			cur = scanned
		}
		if err := settle(nil); err != nil {
			return fail(err)
		}
		if len(evs) > 0 && time.Since(lastSaved) > time.Second {
			f.setProgress(acked, high, "")
			save()
		}
		if more {
			idleWait = 500 * time.Microsecond
			continue
		}
		// Caught up with what is below the horizon.
		if err := drain(false); err != nil {
			return fail(err)
		}
		stateChanged := f.Status().State != StateCaughtUp
		f.setProgress(acked, high, StateCaughtUp)
		if stateChanged || time.Since(lastSaved) > time.Second {
			save()
		}
		// Rows above the horizon are committed but wait for an older
		// transaction to finish; look again soon rather than at the poll.
		above, err := eventstore.Pending(ctx, f.pool, cur)
		if err != nil {
			return err
		}
		wait := f.cfg.PollInterval
		if above {
			wait = idleWait
			idleWait = min(idleWait*2, 5*time.Millisecond)
		} else {
			idleWait = 500 * time.Microsecond
		}
		timer := time.NewTimer(wait)
		f.busy.Stop()
		select {
		case <-ctx.Done():
		case <-f.wake:
		case <-timer.C:
		}
		f.busy.Start()
		timer.Stop()
	}
}

// refusedError is a publish the stream refused for its max_msg_size.
type refusedError struct {
	ev   *eventstore.Event
	over *OversizedError
}

func (e *refusedError) Error() string { return e.over.Error() }
func (e *refusedError) Unwrap() error { return e.over }

// publishError turns the failure of publish p into the error the session
// ends with: a *refusedError when the stream refused the message for its
// max_msg_size (JetStream error 10054, JSStreamMessageExceedsMaximumErr).
func (f *Feeder) publishError(ctx context.Context, stream jetstream.Stream, p pending, err error) error {
	var api *jetstream.APIError
	if p.ev == nil || !errors.As(err, &api) || api.ErrorCode != jetstream.JSErrCodeStreamMessageExceedsMaximum {
		return fmt.Errorf("feeder: publish event %d: %w", p.pos, err)
	}
	limit := int64(stream.CachedInfo().Config.MaxMsgSize)
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if info, ierr := stream.Info(ictx); ierr == nil { // the limit may have changed since the start
		limit = int64(info.Config.MaxMsgSize)
	}
	e := p.ev
	size := p.size
	if subj, serr := subject.EventWithPrefix(f.cfg.SubjectPrefix, e.AggregateType, e.AggregateID); serr == nil {
		size -= int64(len(subj)) // the stream counts headers and data
	}
	return &refusedError{ev: e, over: &OversizedError{Position: e.Position, AggregateType: e.AggregateType,
		AggregateID: e.AggregateID, EventType: e.Type, Size: size, MaxPayload: f.nc.MaxPayload(),
		MaxMsgSize: limit, Stream: f.cfg.Stream}}
}

func msgSize(m *nats.Msg) int64 {
	n := len(m.Subject) + len(m.Data) + len("NATS/1.0\r\n\r\n")
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return int64(n)
}

func (f *Feeder) deadLetter(ctx context.Context, e eventstore.Event, over *OversizedError) error {
	_, err := f.pool.Exec(ctx, `
INSERT INTO eventstore.dead_letters (feeder, position, transaction_id, aggregate_type, aggregate_id, event_type, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (feeder, position) DO NOTHING`,
		f.cfg.Name, e.Position, e.TransactionID, e.AggregateType, e.AggregateID, e.Type, over.Error())
	if err != nil {
		return fmt.Errorf("feeder: dead-letter event %d: %w", e.Position, err)
	}
	f.metrics.deadLettered.Inc()
	f.log.Warn("event dead-lettered", logPosition, e.Position, "reason", over.Error())
	return nil
}

// Checkpoint is where the feed stands: the last row handled (published,
// dead-lettered or skipped by a filter) and the stream sequence after it.
type Checkpoint struct {
	Cursor    eventstore.Cursor `json:"cursor"`
	StreamSeq uint64            `json:"stream_seq"`
	Stream    string            `json:"stream"`
	Updated   time.Time         `json:"updated"`
}

// resolveStart finds where to resume: after the stream's last message, or
// after the checkpoint when it is at the same stream sequence (rows skipped
// by filters after the last message).
func (f *Feeder) resolveStart(ctx context.Context, stream jetstream.Stream) (Checkpoint, error) {
	// Each request gets a short deadline: during a leader election one may
	// go unanswered, and the session's retry asks again sooner than the
	// client's default timeout (5 s) would.
	ctx, cancel := context.WithTimeout(ctx, startRequestTimeout)
	defer cancel()
	info, err := stream.Info(ctx)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("feeder: stream info: %w", err)
	}
	last := info.State.LastSeq
	start := Checkpoint{StreamSeq: last, Stream: f.cfg.Stream}
	found := last == 0
	if last > 0 {
		raw, err := stream.GetMsg(ctx, last)
		switch {
		case err == nil:
			c, perr := cursorOf(raw.Header)
			if perr != nil {
				return Checkpoint{}, fmt.Errorf("feeder: stream %s message %d: %w; is something else publishing to it?", f.cfg.Stream, last, perr)
			}
			start.Cursor, found = c, true
		case errors.Is(err, jetstream.ErrMsgNotFound):
		default:
			return Checkpoint{}, fmt.Errorf("feeder: read stream %s message %d: %w", f.cfg.Stream, last, err)
		}
	}
	ck, err := f.loadCheckpoint(ctx)
	if err != nil {
		return Checkpoint{}, err
	}
	if ck != nil && ck.Stream == f.cfg.Stream && ck.StreamSeq == last && (!found || start.Cursor.Less(ck.Cursor)) {
		start.Cursor, found = ck.Cursor, true
	}
	if !found {
		return Checkpoint{}, fmt.Errorf("feeder: stream %s: its last message %d is gone (max age or purge) and the checkpoint does not match it; cannot tell where to resume", f.cfg.Stream, last)
	}
	return start, nil
}

func cursorOf(h nats.Header) (eventstore.Cursor, error) {
	pos, err := strconv.ParseInt(h.Get(contract.HeaderEventPosition), 10, 64)
	if err != nil {
		return eventstore.Cursor{}, fmt.Errorf("no valid %s header", contract.HeaderEventPosition)
	}
	tx, err := strconv.ParseUint(h.Get(contract.HeaderEventTransaction), 10, 64)
	if err != nil {
		return eventstore.Cursor{}, fmt.Errorf("no valid %s header", contract.HeaderEventTransaction)
	}
	return eventstore.Cursor{TransactionID: tx, Position: pos}, nil
}

func (f *Feeder) stateKV(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := f.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      f.cfg.StateBucket,
		Description: "jetproj feeder checkpoints and status",
		History:     1,
		Replicas:    f.cfg.StreamReplicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("feeder: state bucket %s: %w", f.cfg.StateBucket, err)
	}
	return kv, nil
}

func checkpointKey(name string) string { return "checkpoint." + name }
func statusKey(name string) string     { return "status." + name }

func (f *Feeder) loadCheckpoint(ctx context.Context) (*Checkpoint, error) {
	e, err := f.state.Get(ctx, checkpointKey(f.cfg.Name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("feeder: load checkpoint: %w", err)
	}
	var ck Checkpoint
	if err := json.Unmarshal(e.Value(), &ck); err != nil {
		return nil, fmt.Errorf("feeder: checkpoint %s is not valid: %w", checkpointKey(f.cfg.Name), err)
	}
	return &ck, nil
}

func (f *Feeder) saveCheckpoint(ctx context.Context, ck Checkpoint) error {
	ck.Stream, ck.Updated = f.cfg.Stream, time.Now().UTC()
	b, _ := json.Marshal(ck)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := f.state.Put(ctx, checkpointKey(f.cfg.Name), b); err != nil {
		return err
	}
	f.saveStatus(ctx)
	return nil
}
