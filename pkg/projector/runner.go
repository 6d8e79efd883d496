package projector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/derived"
	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/internal/lease"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/subject"
)

// SlotOf maps a partition key to its slot.
func SlotOf(key string, slots int) int {
	if slots <= 1 {
		return 0
	}
	// FNV-1a, 32 bits (hash/fnv's New32a), without allocating.
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return int(h % uint32(slots))
}

// runner runs one projection in this process.
type runner struct {
	def     projectionspec.Spec
	spec    projectionspec.Settings
	store   StateStore
	js      jetstream.JetStream
	nc      *nats.Conn
	source  projection.Source
	parts_  projection.PartitionProvider
	leases  jetstream.KeyValue
	reg     *Registry
	replica string
	ttl     time.Duration
	log     *slog.Logger
	metrics *metrics

	events    chan slotEvent // from the slot manager to the loop
	fetched   chan fetched   // catch-up reads of failing partitions, to the loop
	loaded    chan loaded    // slots read off the loop, to the loop
	loadSem   chan struct{}  // bounds the slots read at once
	forgotten chan int       // slots the loop gave up, to the manager

	// Owned by the loop goroutine.
	eventPrefix string           // subject prefix of aggregate sources, for derived subjects
	failing     map[string]*part // partitions with fail set (may hold stale entries)
	slots       map[int]*ownedSlot
	loading     map[int]*lease.Lease // slots acquired and being read
	// partitions read since the last collection installSlot asked for
	loadedSinceGC int
	next          uint64 // next stream sequence the consumer delivers
	restartAt     uint64 // restart the consumer here before the next batch (0: no)
	cons          *consumer
	lastMark      time.Time
	// Write-behind (KV state only): partitions changed since the last
	// write, the time of that write, and the sequence up to which every
	// handled message is stored (what status reports as processed).
	writeBehind bool
	behind      bool // the last batch had another full batch after it
	dirty       []*part
	lastWrite   time.Time
	durable     uint64
	batch       []projection.Message // reused between batches
	// Derived events of KV-state partitions written but not yet published
	// (relay.go), and what the streams hold.
	unsent []*part
	holds  map[*part]*derived.Backoff // unsent partitions JetStream refused, paused
	marks  *derived.Tracker
	// unsure are the partitions whose own subject may hold derived events
	// this runner did not see acknowledged: loaded with events in their
	// record (a previous owner may have published some), or refused (a
	// refused publish may have landed). Their subject's last event is read
	// from the stream; every other partition's is known without a read
	// (seedMarks).
	unsure         map[*part]bool
	streamReplicas int
	busy           opsserver.Busy // a step of the loop in progress (see liveness.go)
	// eager sends each partition's queued statements after it (looking for
	// the one that failed a commit); batchErrs counts batches in a row that
	// failed, and no batch is read again before pauseUntil.
	eager      bool
	caps       Capabilities // what the store can do
	batchErrs  int
	pauseUntil time.Time
	// unsentBytes is what the partitions waiting to publish held at the
	// start of the batch (countUnsent).
	unsentBytes int
	unsentLimit int // maxUnpublishedTotal
	// draining: a polling projection takes what its last tick found.
	draining bool
	// consFailing counts consumer starts that failed in a row.
	consFailing int
	consBackoff jsretry.Backoff
	// delivered is when the consumer last gave the loop a message (or
	// started); checkConsumer compares it with what the source holds.
	delivered time.Time
	// consCheck is how often an idle loop asks the source whether the
	// consumer holds back messages (consumerCheckEvery unless a test
	// lowers it).
	consCheck time.Duration
	// quietRestarts counts consumer restarts by checkConsumer since the
	// last message.
	quietRestarts int
	// unanswered counts checks in a row that got an error rather than an
	// answer while the consumer delivered nothing.
	unanswered int
	// states are decoded states of partitions a catch-up handled, as
	// their stored state encodes them (takeState, keepState).
	states map[*part]any

	mu     sync.Mutex
	status RunnerStatus

	progress *progressPub // what WaitFor watches (progress.go)
}

// RunnerStatus is what a runner reports about itself.
type RunnerStatus struct {
	Projection string `json:"projection"`
	Replica    string `json:"replica"`
	Slots      []int  `json:"slots"`
	Partitions int    `json:"partitions"`
	Processed  uint64 `json:"processed_seq"`
	Failing    int    `json:"failing"`
	State      string `json:"state"`
}

type slotEvent struct {
	kind  int // evAcquired, evLost, evRelease
	slot  int
	lease *lease.Lease
	done  chan struct{}
}

const (
	evAcquired = iota
	evLost
	evRelease
	evPause
)

// run processes until ctx ends.
func (r *runner) run(ctx context.Context) error {
	r.slots, r.failing = map[int]*ownedSlot{}, map[string]*part{}
	r.caps = capabilitiesOf(r.store)
	r.writeBehind, r.lastWrite = r.caps.WriteBehind && r.spec.WriteEvery > 0, time.Now()
	r.events = make(chan slotEvent, 4*r.spec.Slots+16)
	r.forgotten = make(chan int, 4096)
	r.fetched = make(chan fetched, 16)
	r.loaded, r.loadSem, r.loading = make(chan loaded, maxLoads), make(chan struct{}, maxLoads), map[int]*lease.Lease{}
	mctx, stopManager := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.manage(mctx) })
	r.progress = newProgressPub()
	wg.Go(func() { r.runProgress(mctx) })
	defer func() {
		// Write what write-behind holds while the slots are still ours.
		if len(r.dirty) > 0 {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := r.commit(fctx, nil, r.next-1, false); err != nil {
				r.log.Warn("state not written at stop; the next owner reads those events again", "error", err)
			}
			cancel()
		}
		stopManager()
		// Drain manager requests so it can finish.
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		for {
			select {
			case ev := <-r.events:
				if ev.done != nil {
					close(ev.done)
				}
			case <-done:
				r.stopConsumer()
				return
			}
		}
	}()

	ctlCh := make(chan *nats.Msg, 16)
	ctl, err := r.nc.ChanSubscribe(contract.ControlSubject(r.def.Name()), ctlCh)
	if err != nil {
		return err
	}
	defer ctl.Unsubscribe() //nolint:errcheck

	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	check := time.NewTicker(r.consCheck)
	defer check.Stop()
	defer r.busy.Stop()
	for {
		r.noteProgress()
		r.busy.Start()
		// Apply ownership changes between batches.
		for drained := false; !drained; {
			select {
			case ev := <-r.events:
				r.handleSlotEvent(ctx, ev)
			default:
				drained = true
			}
		}
		// Without slots, stand by. While slots are being read, wait for
		// them: each new slot may move the consumer back to its watermark,
		// and reading on meanwhile would read those messages twice.
		if len(r.slots) == 0 || len(r.loading) > 0 {
			if len(r.slots) == 0 {
				r.stopConsumer()
				r.setState("standby")
			} else {
				r.setState("loading")
			}
			r.busy.Stop()
			select {
			case <-ctx.Done():
				return nil
			case ev := <-r.events:
				r.busy.Start()
				r.handleSlotEvent(ctx, ev)
			case res := <-r.loaded:
				r.busy.Start()
				r.installSlot(ctx, res)
			case m := <-ctlCh:
				r.busy.Start()
				r.control(ctx, m)
			case <-time.After(slowLoad):
				// Loads are bounded (slotLoadTimeout); say what the
				// projection waits for meanwhile.
				if len(r.loading) > 0 {
					r.log.Warn("slots still being read; the projection waits for them", "slots", len(r.loading), "after", slowLoad)
				}
			}
			continue
		}
		if d := time.Until(r.pauseUntil); r.restartAt != 0 && d > 0 {
			// A batch failed: wait before reading it again, still
			// answering commands and ownership changes.
			r.setState("paused after a failed batch")
			r.busy.Stop()
			select {
			case <-ctx.Done():
				return nil
			case ev := <-r.events:
				r.busy.Start()
				r.handleSlotEvent(ctx, ev)
			case m := <-ctlCh:
				r.busy.Start()
				r.control(ctx, m)
			case <-time.After(d):
				r.pauseUntil = time.Time{}
			}
			continue
		}
		if r.cons == nil || r.restartAt != 0 {
			if err := r.startConsumer(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				// Logged once per episode (an election can take seconds).
				if r.consFailing == 0 {
					r.log.Warn("consumer start failed; retrying", "error", err)
				} else {
					r.log.Debug("consumer start failed again; retrying", "error", err, "attempt", r.consFailing+1)
				}
				r.consFailing++
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(r.consBackoff.Next()):
				}
				continue
			}
			if r.consFailing > 0 {
				r.log.Info("consumer started again", "attempts", r.consFailing+1)
				r.consFailing = 0
			}
			r.consBackoff.Reset()
			r.delivered = time.Now()
		}
		r.setState("running")
		// Wait for work: messages, ownership changes, due retries, commands.
		r.armRetry(retry)
		var first projection.Message
		got := false
		var tick <-chan time.Time
		msgs := r.cons.msgs
		if r.spec.Mode == projectionspec.Polling && !r.draining {
			// Polling projections look at what arrived once per interval,
			// and then take all of it, batch after batch.
			tick, msgs = time.After(r.spec.Interval), nil
		}
		// Whatever wakes the loop is a step the liveness check watches
		// (busy), as a batch is.
		r.busy.Stop()
		select {
		case <-ctx.Done():
			return nil
		case ev := <-r.events:
			r.busy.Start()
			r.handleSlotEvent(ctx, ev)
			continue
		case m := <-ctlCh:
			r.busy.Start()
			r.control(ctx, m)
			continue
		case <-retry.C:
			r.busy.Start()
			r.retryDue(ctx)
			continue
		case res := <-r.fetched:
			r.busy.Start()
			r.caughtUp(ctx, res)
			continue
		case res := <-r.loaded:
			r.busy.Start()
			r.installSlot(ctx, res)
			continue
		case <-r.idleMark():
			r.busy.Start()
			// Quiet source: save the watermarks the last batches reached,
			// so status shows no lag and a new owner starts at the end.
			r.lastMark = time.Time{}
			if err := r.sendUnsent(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("derived events not published yet; retrying", "error", err)
			}
			if err := r.commit(ctx, nil, r.next-1, false); err != nil && ctx.Err() == nil {
				r.log.Warn("watermarks not saved", "error", err)
			}
			continue
		case err := <-r.cons.sub.Err():
			r.log.Warn("consumer failed; restarting", "error", err)
			r.restartAt = r.next
			continue
		case <-check.C:
			r.busy.Start()
			r.checkConsumer(ctx)
			continue
		case <-tick:
		case first = <-msgs:
			got = true
		}
		if !got {
			select {
			case first = <-r.cons.msgs:
			default:
				continue
			}
		}
		r.busy.Start()
		r.delivered, r.quietRestarts, r.unanswered = time.Now(), 0, 0
		batch := r.collect(first)
		// Behind: at least another full batch waits.
		last := batch[len(batch)-1]
		r.process(ctx, batch, last.Pending >= uint64(r.spec.BatchSize) || (len(batch) >= r.spec.BatchSize && len(r.cons.msgs) > 0))
		// A polling projection drains what its tick found, then waits for
		// the next one.
		r.draining = r.spec.Mode == projectionspec.Polling && (last.Pending > 0 || len(r.cons.msgs) > 0)
		clear(batch) // let the messages go; the buffer is reused
	}
}

// slowLoad is how long the loop waits for slots being read before it says
// so in the log (and again each slowLoad after).
const slowLoad = 30 * time.Second

// errNoAnswer: the subscription did not say in time how many messages it
// has pending.
var errNoAnswer = errors.New("projector: the consumer did not answer")

// maxUnanswered is how many consumer checks in a row may fail (with an
// error other than the consumer being gone) before the consumer is
// restarted anyway.
const maxUnanswered = 3

// consumerCheckEvery is how often a runner waiting for messages asks the
// source whether its consumer holds some back.
const consumerCheckEvery = 10 * time.Second

// pendingReporter is a subscription that can tell how many messages the
// source holds for it and has not delivered (see projection.Subscription).
type pendingReporter interface {
	Pending(ctx context.Context) (uint64, error)
}

// checkConsumer restarts a consumer that has delivered nothing for a check
// interval although the source holds messages for it: a client library's
// consumer may stop pulling after a server restart or a leader change and
// never say so. Polling projections hold messages back on purpose and are
// not checked.
func (r *runner) checkConsumer(ctx context.Context) {
	pr, ok := r.cons.sub.(pendingReporter)
	if !ok || r.spec.Mode == projectionspec.Polling || len(r.cons.msgs) > 0 || time.Since(r.delivered) < r.consCheck {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// Asked aside: a subscription stuck in its client (nats.go's ordered
	// consumer holds its lock while it recreates itself) may not return
	// when ctx ends.
	type answer struct {
		n   uint64
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		n, err := pr.Pending(ctx)
		ch <- answer{n, err}
	}()
	var n uint64
	var err error
	select {
	case a := <-ch:
		n, err = a.n, a.err
	case <-ctx.Done():
		err = fmt.Errorf("%w: %w", errNoAnswer, ctx.Err())
	}
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, errNoAnswer):
		// Gone from the server, or stuck in the client (nats.go's ordered
		// consumer retries recreating itself for as long as it takes,
		// holding its lock; seen after a leader SIGKILL).
	case err != nil && r.unanswered+1 < maxUnanswered:
		// Passing trouble (an election): the next check asks again.
		r.unanswered++
		r.log.Debug("consumer check got no answer", "error", err, "in_a_row", r.unanswered)
		return
	case err != nil:
		// Every check for maxUnanswered intervals failed while nothing
		// came: a consumer whose server side was lost with a node may be
		// asked about for ever; a new one is cheap.
	case n == 0:
		r.unanswered = 0
		return
	}
	r.unanswered = 0
	// Logged once per episode: while the cluster cannot answer, the check
	// restarts the consumer every interval.
	log := r.log.Warn
	if r.quietRestarts > 0 {
		log = r.log.Debug
	}
	r.quietRestarts++
	if err != nil {
		log("consumer did not answer and delivered nothing; restarting it", "idle", time.Since(r.delivered).Round(time.Second), "error", err)
	} else {
		log("consumer delivered nothing although the source holds messages for it; restarting it", "pending", n, "idle", time.Since(r.delivered).Round(time.Second))
	}
	r.metrics.errors.WithLabelValues(r.def.Name()).Inc()
	r.restartAt = r.next
}

// idleMark fires a second after the last watermark save when a slot's
// watermark is ahead of what is saved; nil otherwise.
func (r *runner) idleMark() <-chan time.Time {
	if len(r.unsent) > 0 {
		return time.After(r.unsentRetry(time.Now())) // publishing failed: try again
	}
	if len(r.dirty) > 0 && r.behind {
		// Behind, and messages are slow to come: write-behind still
		// writes once per interval.
		return time.After(max(r.spec.WriteEvery-time.Since(r.lastWrite), time.Millisecond))
	}
	for _, sl := range r.slots {
		if sl.watermark > sl.saved {
			return time.After(max(time.Second-time.Since(r.lastMark), time.Millisecond))
		}
	}
	return nil
}

// markFailing remembers a partition whose fail is set, so retries look at
// failing partitions only: idle and healthy partitions cost nothing.
func (r *runner) markFailing(p *part) {
	if p.failure() != nil {
		r.failing[p.key()] = p
	}
}

func (r *runner) setState(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.State = s
	r.status.Slots = r.status.Slots[:0]
	for s := range r.slots {
		r.status.Slots = append(r.status.Slots, s)
	}
	slices.Sort(r.status.Slots)
	r.status.Partitions = r.partitions()
	r.status.Processed = r.durable
}

func (r *runner) armRetry(t *time.Timer) {
	var earliest time.Time
	for k, p := range r.failing {
		f := p.failure()
		if f == nil || !r.current(p) {
			delete(r.failing, k)
			continue
		}
		if p.parked() == nil && (earliest.IsZero() || f.next.Before(earliest)) {
			earliest = f.next
		}
	}
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	if earliest.IsZero() {
		t.Reset(time.Hour)
		return
	}
	// A due retry must be ready at the select at once: the timer is armed
	// again before each wait, so a timer of even 1ms never fires while the
	// consumer has messages waiting, and a backlog starved retries.
	t.Reset(max(time.Until(earliest), 0))
}

var jitter = func(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }

func (r *runner) generation() int {
	e, _ := r.reg.cached(r.def.Name())
	return e.Generation
}

// emitting reports whether events derived from the message at seq are
// emitted: not while the projection replays what it had seen (reset,
// rebuild) nor while its deployment is not live.
// replayUntil is the source sequence up to which the projection replays
// what it had seen.
func (r *runner) replayUntil() uint64 {
	e, _ := r.reg.cached(r.def.Name())
	return e.ReplayUntil
}

// settleLive makes the cached registry entry current before a batch when
// what the batch emits depends on it: while the cached entry says the
// deployment is not live, or is being switched live, the entry is read from
// the server, and a switch in progress (see SetLive) is waited for. So a
// batch never holds an event appended after SetLive read the source's end
// while this replica still thinks the deployment is not live.
func (r *runner) settleLive(ctx context.Context) error {
	name := r.def.Name()
	if e, ok := r.reg.cached(name); !ok || (!e.NotLive && !e.LivePending) {
		return nil
	}
	deadline := time.Now().Add(liveSwitchWait)
	for {
		e, ok, err := r.reg.Get(ctx, name)
		if err != nil {
			return fmt.Errorf("projector: registry: %w", err)
		}
		if !ok {
			return nil
		}
		r.reg.remember(name, e)
		if !e.LivePending {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("projector: %s is being switched live and SetLive has not finished", name)
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// liveSwitchWait is how long a batch waits for a switch to live in
// progress before it fails (and is read again after a pause).
const liveSwitchWait = 5 * time.Second

func (r *runner) emitting(seq uint64) bool {
	e, ok := r.reg.cached(r.def.Name())
	if !ok {
		return true
	}
	return !e.NotLive && seq > e.ReplayUntil
}

// EmitSubject is the subject of a partition's derived events:
// project.<name>.<type>.<id> for an aggregate partition ("wallet/w1" →
// project.wallet_balance.wallet.w1), project.<name>.<key> otherwise, with
// the tokens encoded as in package subject.
func EmitSubject(projection, key string) string {
	if typ, id, ok := strings.Cut(key, "/"); ok {
		return contract.ProjectionPrefix + "." + projection + "." + typ + "." + subject.EncodeToken(id)
	}
	return contract.ProjectionPrefix + "." + projection + "." + subject.EncodeToken(key)
}
