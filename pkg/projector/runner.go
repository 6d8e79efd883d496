package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/derived"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/lease"
	"github.com/jetproj/jetproj/pkg/opsserver"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/subject"
	"github.com/jetproj/jetproj/pkg/tracing"
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

// derivedSubject is the subject of an aggregate partition's messages, which
// need not be stored: <prefix>.<type token>.<id token>.
func (r *runner) derivedSubject(key string) string {
	if r.eventPrefix == "" {
		return ""
	}
	typ, id, ok := strings.Cut(key, "/")
	if !ok {
		return ""
	}
	return r.eventPrefix + "." + typ + "." + subject.EncodeToken(id)
}

// subjectOf is the subject to read a partition alone with.
func (r *runner) subjectOf(p *part) string {
	if p.x != nil && p.x.subject != "" {
		return p.x.subject
	}
	return r.derivedSubject(p.key())
}

func (r *runner) setRec(p *part, rec Record) {
	if r.states != nil {
		delete(r.states, p) // the state changes: the decoded one is stale
	}
	r.fillPart(p, rec)
}

// fillPart stores rec in p. It touches no loop state (readSlot runs it off
// the loop).
func (r *runner) fillPart(p *part, rec Record) {
	if rec.Subject != "" && r.isDerived(rec.Key, rec.Subject) {
		rec.Subject = ""
	}
	p.setRecord(rec)
}

// isDerived reports whether subj is the subject derivedSubject gives key,
// without building it.
func (r *runner) isDerived(key, subj string) bool {
	typ, id, ok := strings.Cut(key, "/")
	if r.eventPrefix == "" || !ok {
		return false
	}
	rest, ok := strings.CutPrefix(subj, r.eventPrefix)
	if !ok || len(rest) < len(typ)+2 || rest[0] != '.' || rest[1:1+len(typ)] != typ || rest[1+len(typ)] != '.' {
		return false
	}
	return rest[2+len(typ):] == subject.EncodeToken(id)
}

type ownedSlot struct {
	lease     *lease.Lease
	token     uint64
	watermark uint64 // handled up to here
	saved     uint64 // watermark last written
	parts     *partTable
}

// part returns the partition with key in an owned slot, or nil.
func (r *runner) part(key string) *part {
	sl := r.slots[SlotOf(key, r.spec.Slots)]
	if sl == nil {
		return nil
	}
	return sl.parts.get(key)
}

// current reports whether p is still the partition of its key: not given up
// with its slot since.
func (r *runner) current(p *part) bool {
	sl := r.slots[int(int(p.slot))]
	return sl != nil && sl.parts.get(p.key()) == p
}

// partitions counts the partitions of owned slots.
func (r *runner) partitions() int {
	n := 0
	for _, sl := range r.slots {
		n += sl.parts.len()
	}
	return n
}

// runner runs one projection in this process.
type runner struct {
	def     *projection.Definition
	spec    projection.Spec
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
	unsent         []*part
	holds          map[*part]*refusedHold // unsent partitions JetStream refused, paused
	marks          *derived.Tracker
	streamReplicas int
	busy           opsserver.Busy // a step of the loop in progress (see liveness.go)
	// eager sends each partition's queued statements after it (looking for
	// the one that failed a commit); batchErrs counts batches in a row that
	// failed, and no batch is read again before pauseUntil.
	eager      bool
	caps       Capabilities // what the store can do
	batchErrs  int
	pauseUntil time.Time
	// states are decoded states of partitions a catch-up handled, as
	// their stored state encodes them (takeState, keepState).
	states map[*part]any

	mu     sync.Mutex
	status RunnerStatus
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
	ctl, err := r.nc.ChanSubscribe(controlSubject(r.def.Name()), ctlCh)
	if err != nil {
		return err
	}
	defer ctl.Unsubscribe() //nolint:errcheck

	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	defer r.busy.Stop()
	for {
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
				r.log.Warn("consumer start failed; retrying", "error", err)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(500 * time.Millisecond):
				}
				continue
			}
		}
		r.setState("running")
		// Wait for work: messages, ownership changes, due retries, commands.
		r.armRetry(retry)
		var first projection.Message
		got := false
		var tick <-chan time.Time
		msgs := r.cons.msgs
		if r.spec.Mode == projection.Polling {
			// Polling projections look at what arrived once per interval.
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
		batch := r.collect(first)
		// Behind: at least another full batch waits.
		last := batch[len(batch)-1]
		r.process(ctx, batch, last.Pending >= uint64(r.spec.BatchSize) || (len(batch) >= r.spec.BatchSize && len(r.cons.msgs) > 0))
		clear(batch) // let the messages go; the buffer is reused
	}
}

// maxBatchBytes bounds the payload of a batch.
const maxBatchBytes = 8 << 20

// catchUpSize is the most messages a batch takes while catching up
// (projection.CatchUpBatchSize): commits, flushes and derived events per
// partition drop; batches at the head stay BatchSize, for latency.
func (r *runner) catchUpSize() int { return max(r.spec.BatchSize, r.spec.CatchUpBatchSize) }

// collect takes the batch that starts with first from the consumer:
// BatchSize messages, or while far behind (first.Pending tells) up to
// catchUpSize, waiting briefly for those that are on their way.
func (r *runner) collect(first projection.Message) []projection.Message {
	limit := r.spec.BatchSize
	if first.Pending >= uint64(limit) {
		limit = r.catchUpSize()
	}
	if cap(r.batch) < limit {
		r.batch = make([]projection.Message, 0, limit)
	}
	batch := append(r.batch[:0], first)
	size := len(first.Data)
	var wait *time.Timer
	defer func() {
		if wait != nil {
			wait.Stop()
		}
	}()
	for len(batch) < limit && size < maxBatchBytes {
		select {
		case m := <-r.cons.msgs:
			batch, size = append(batch, m), size+len(m.Data)
			continue
		default:
		}
		if len(batch) < r.spec.BatchSize || batch[len(batch)-1].Pending == 0 {
			break // an ordinary batch, or nothing more to come
		}
		// Catching up and the consumer is a little behind us.
		if wait == nil {
			wait = time.NewTimer(catchUpWait)
		}
		select {
		case m := <-r.cons.msgs:
			batch, size = append(batch, m), size+len(m.Data)
			continue
		case <-wait.C:
		}
		break
	}
	r.batch = batch
	return batch
}

// catchUpWait bounds how long a catch-up batch waits for more messages.
const catchUpWait = 5 * time.Millisecond

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

func (r *runner) handleSlotEvent(ctx context.Context, ev slotEvent) {
	switch ev.kind {
	case evAcquired:
		r.loadSlot(ctx, ev.slot, ev.lease)
	case evRelease:
		// Handing the slot over: write its partitions first, so the next
		// owner starts where this one stopped.
		if len(r.dirty) > 0 {
			if err := r.commit(ctx, nil, r.next-1, false); err != nil {
				r.log.Warn("state not written before handover", "slot", ev.slot, "error", err)
			}
		}
		delete(r.loading, ev.slot)
		r.dropSlot(ev.slot)
	case evLost:
		delete(r.loading, ev.slot)
		r.dropSlot(ev.slot)
	}
	if ev.done != nil {
		close(ev.done)
	}
}

// managerForget tells the manager the loop gave a slot up.
func (r *runner) managerForget(slot int) {
	select {
	case r.forgotten <- slot:
	default:
	}
}

// loaded is a slot read off the loop: its partitions, and those of them
// the loop must know about (failing, or with derived events to publish).
type loaded struct {
	slot   int
	lease  *lease.Lease
	parts  *partTable
	extras []*part
	wm     uint64
	err    error
}

// maxLoads bounds the slots read at once.
const maxLoads = 4

// gcAfterLoaded is how many partitions read from the store call for a
// collection (installSlot).
const gcAfterLoaded = 64 << 10

// loadSlot fences and reads a slot the manager acquired, off the loop (a
// slot of a projection with a million partitions holds ~16k of them), and
// hands it to the loop (installSlot).
func (r *runner) loadSlot(ctx context.Context, slot int, l *lease.Lease) {
	r.loading[slot] = l
	go func() {
		res := loaded{slot: slot, lease: l}
		select {
		case r.loadSem <- struct{}{}:
			res.parts, res.extras, res.wm, res.err = r.readSlot(ctx, slot, l)
			<-r.loadSem
		case <-ctx.Done():
			res.err = ctx.Err()
		}
		select {
		case r.loaded <- res:
		case <-ctx.Done():
		}
	}()
}

// readSlot fences slot with the lease's token and builds its partitions
// from the store. It touches no loop state.
func (r *runner) readSlot(ctx context.Context, slot int, l *lease.Lease) (*partTable, []*part, uint64, error) {
	if err := r.store.Fence(ctx, slot, l.Revision()); err != nil {
		return nil, nil, 0, err
	}
	recs, wm, err := r.store.LoadSlot(ctx, slot)
	if err != nil {
		return nil, nil, 0, err
	}
	parts := newPartTable(len(recs))
	var extras []*part
	for i := range recs {
		rec := &recs[i]
		p := newPart(slot, rec.Key)
		r.fillPart(p, *rec)
		switch {
		case rec.Parked != nil:
			p.setFailure(&failure{attempts: rec.Parked.Attempts, err: rec.Parked.Error, seq: rec.Parked.Seq, typ: rec.Parked.EventType})
		case rec.Behind:
			f := &failure{next: time.Now()}
			if rf := rec.Failing; rf != nil {
				f.attempts, f.err, f.seq, f.typ = rf.Attempts, rf.Error, rf.Seq, rf.EventType
			}
			p.setFailure(f)
		}
		if p.x != nil && (p.x.fail != nil || len(p.x.outbox) > 0) {
			extras = append(extras, p)
		}
		parts.put(p)
		*rec = Record{} // let the loaded copy go
	}
	return parts, extras, wm, nil
}

// installSlot makes a read slot owned, unless it was lost or released
// while it was read.
func (r *runner) installSlot(ctx context.Context, res loaded) {
	if r.loading[res.slot] != res.lease {
		return // released or lost meanwhile; the manager has handled the lease
	}
	delete(r.loading, res.slot)
	if res.err != nil {
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("slot not taken", "slot", res.slot, "error", res.err)
		// Give it back so someone can take it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = res.lease.Release(rctx)
		cancel()
		r.managerForget(res.slot)
		return
	}
	for _, p := range res.extras {
		if f := p.failure(); f != nil && p.parked() == nil && r.def.Kind() == projection.Global && (r.restartAt == 0 || p.seq+1 < r.restartAt) {
			r.restartAt = p.seq + 1
			f.retrying = true
		}
		r.markFailing(p)
		r.queueUnsent(p)
	}
	wm := res.wm
	r.slots[res.slot] = &ownedSlot{lease: res.lease, token: res.lease.Revision(), watermark: wm, saved: wm, parts: res.parts}
	if r.marks != nil {
		r.marks.Forget() // another replica may have published meanwhile
	}
	if len(r.slots) == 1 || wm < r.durable {
		r.durable = wm
	}
	if r.cons == nil || wm+1 < r.next {
		if r.restartAt == 0 || wm+1 < r.restartAt {
			r.restartAt = wm + 1
		}
	}
	r.metrics.slots.WithLabelValues(r.def.Name()).Set(float64(len(r.slots)))
	r.log.Info("slot acquired", "slot", res.slot, "partitions", res.parts.len(), "watermark", wm, "token", res.lease.Revision())
	// Reading records leaves about five times their size as garbage, and
	// the collector lets the heap grow to twice what is live before it
	// runs: with a million partitions that alone would double the peak.
	// Collect after every gcAfterLoaded records read instead.
	if r.loadedSinceGC += res.parts.len(); r.loadedSinceGC >= gcAfterLoaded {
		r.loadedSinceGC = 0
		runtime.GC()
	}
	if err := r.sendUnsent(ctx); err != nil && ctx.Err() == nil {
		r.log.Warn("derived events left by the previous owner not published yet; retrying", "slot", res.slot, "error", err)
	}
}

func (r *runner) dropSlot(slot int) {
	if _, ok := r.slots[slot]; !ok {
		return
	}
	delete(r.slots, slot)
	r.metrics.slots.WithLabelValues(r.def.Name()).Set(float64(len(r.slots)))
	r.log.Info("slot dropped", "slot", slot)
}

// consumer is the source's subscription feeding a channel.
type consumer struct {
	sub  projection.Subscription
	msgs chan projection.Message
	stop chan struct{}
}

func (r *runner) startConsumer(ctx context.Context) error {
	start := r.restartAt
	if start == 0 {
		start = r.next
	}
	if start == 0 {
		start = 1
	}
	r.stopConsumer()
	cons := &consumer{msgs: make(chan projection.Message, r.catchUpSize()+r.spec.BatchSize), stop: make(chan struct{})}
	sub, err := r.source.Consume(ctx, start, func(m projection.Message) {
		select {
		case cons.msgs <- m:
		case <-cons.stop:
		}
	})
	if err != nil {
		return fmt.Errorf("projector: consume %s: %w", r.def.Name(), err)
	}
	cons.sub = sub
	r.cons, r.next, r.restartAt = cons, start, 0
	return nil
}

func (r *runner) stopConsumer() {
	if r.cons == nil {
		return
	}
	close(r.cons.stop)
	r.cons.sub.Stop()
	r.cons = nil
}

// msgMeta extracts what handlers see from a message.
func (r *runner) msgMeta(m projection.Message) (projection.Meta, error) {
	key, err := r.parts_.Partition(m)
	if err != nil {
		return projection.Meta{}, err
	}
	if key == "" {
		return projection.Meta{}, fmt.Errorf("%w: empty key for %s", projection.ErrNoPartition, m.Subject)
	}
	meta := projection.Meta{Subject: m.Subject, Sequence: m.Sequence, Raw: m.Data, RecordedAt: m.Time, Partition: key}
	h := m.Header
	meta.Type = h.Get(eventmsg.HeaderEventType)
	meta.TraceParent = h.Get(tracing.Header)
	if h.Get(eventmsg.HeaderEventPosition) != "" && h.Get(eventmsg.HeaderAggregateVersion) != "" {
		e, err := eventmsg.Parse(&nats.Msg{Subject: m.Subject, Header: h, Data: m.Data})
		if err == nil {
			meta.AggregateType, meta.AggregateID, meta.Version, meta.Position = e.AggregateType, e.AggregateID, e.Version, e.Position
			meta.RecordedAt, meta.Metadata = e.RecordedAt, e.Metadata
			return meta, nil
		}
	}
	if p := h.Get(eventmsg.HeaderEventPosition); p != "" {
		meta.Position, _ = strconv.ParseInt(p, 10, 64)
	}
	for k, v := range h {
		if name, ok := strings.CutPrefix(k, eventmsg.MetaPrefix); ok && len(v) > 0 {
			if meta.Metadata == nil {
				meta.Metadata = map[string]string{}
			}
			meta.Metadata[name] = v[0]
		}
	}
	return meta, nil
}

// work is one partition's share of a batch.
type work struct {
	p    *part
	msgs []projection.Meta
}

// process runs a batch of consumer messages; behind tells that more wait.
func (r *runner) process(ctx context.Context, msgs []projection.Message, behind bool) {
	r.behind = behind
	if !behind && r.states != nil {
		r.states = nil // at the head: each batch meets few partitions again
	}
	began := time.Now()
	lastSeq := uint64(0)
	var order []*work
	byKey := map[string]*work{}
	for _, m := range msgs {
		meta, err := r.msgMeta(m)
		if err != nil {
			r.log.Error("message skipped: no partition", "subject", m.Subject, "seq", m.Sequence, "error", err)
			lastSeq = m.Sequence
			continue
		}
		lastSeq = meta.Sequence
		slot := SlotOf(meta.Partition, r.spec.Slots)
		sl, owned := r.slots[slot]
		if !owned {
			continue
		}
		p := sl.parts.get(meta.Partition)
		if p == nil {
			if len(meta.Partition) >= maxKeyLen {
				r.log.Error("message skipped: partition key too long", "subject", m.Subject, "seq", m.Sequence, "length", len(meta.Partition))
				continue
			}
			p = newPart(slot, meta.Partition)
			rec := Record{Key: meta.Partition, Subject: meta.Subject}
			if r.def.Kind() == projection.Global {
				rec.Subject = ""
			}
			r.setRec(p, rec)
			sl.parts.put(p)
		}
		if f := p.failure(); meta.Sequence <= p.seq || (f != nil && !f.retrying) {
			if f != nil && f.fetching && meta.Sequence > f.limit && meta.Sequence > p.seq {
				// Its read stops before this message: keep it for
				// the read's batch.
				switch n := len(f.held); {
				case n > 0 && meta.Sequence <= f.held[n-1].Sequence:
					// Read again (a batch that failed): held already.
				case n < r.spec.BatchSize && !f.overflow:
					f.held = append(f.held, meta)
				default:
					f.overflow = true
				}
			}
			continue // already handled, or waiting for its own retry
		}
		w := byKey[meta.Partition]
		if w == nil {
			w = &work{p: p}
			byKey[meta.Partition] = w
			order = append(order, w)
		}
		w.msgs = append(w.msgs, meta)
	}
	if lastSeq > 0 {
		r.next = lastSeq + 1
	}
	if err := r.commitBatch(ctx, order, lastSeq, behind); err != nil {
		if ctx.Err() != nil {
			return
		}
		r.metrics.errors.WithLabelValues(r.def.Name()).Inc()
		// Read the batch again (commit made the cache match the store),
		// after a pause that grows while batches keep failing.
		r.restartAt = msgs[0].Sequence
		r.batchErrs++
		pause := jitter(min(batchPauseMin<<min(r.batchErrs-1, 10), batchPauseMax))
		r.pauseUntil = time.Now().Add(pause)
		r.log.Warn("batch not committed; reading it again", "in", pause, "failures_in_a_row", r.batchErrs, "error", err)
		return
	}
	r.batchErrs = 0
	r.metrics.batch.WithLabelValues(r.def.Name()).Observe(time.Since(began).Seconds())
	r.metrics.sizes.WithLabelValues(r.def.Name()).Observe(float64(len(msgs)))
	r.metrics.processed.WithLabelValues(r.def.Name()).Add(float64(len(msgs)))
}

// Pauses before a failed batch is read again: from batchPauseMin, doubling
// while batches keep failing, up to batchPauseMax.
const (
	batchPauseMin = 100 * time.Millisecond
	batchPauseMax = 30 * time.Second
)

// commitBatch commits a batch; when a transactional store refuses it (it
// wrote nothing), it finds the partitions that made it fail rather than
// failing every partition again and again: first applying each
// partition's queued statements on their own (a refused statement fails
// its partition alone), then, if the store still refuses, committing
// halves of the batch until the failing partitions stand alone, which
// then fail as a handler error would (retried, then parked). Errors it
// returns fail the batch as a whole: a taken-over slot, a store that
// cannot be reached.
func (r *runner) commitBatch(ctx context.Context, order []*work, lastSeq uint64, behind bool) error {
	err := r.commit(ctx, order, lastSeq, behind)
	if err == nil || ctx.Err() != nil || errors.Is(err, ErrFenced) || len(order) == 0 || !r.caps.Transactional {
		return err
	}
	if !isStatementFailure(err) {
		return err
	}
	r.log.Warn("batch refused by the store; applying its partitions one by one to find the failing ones", "partitions", len(order), "error", err)
	r.eager = true
	defer func() { r.eager = false }()
	if err = r.commit(ctx, order, lastSeq, behind); err == nil || !isStatementFailure(err) || ctx.Err() != nil {
		return err
	}
	if err := r.bisect(ctx, order, err); err != nil {
		return err
	}
	r.advance(lastSeq, true)
	return nil
}

// bisect commits order in halves until each refused part is one
// partition, which then fails alone with the store's error (cause).
func (r *runner) bisect(ctx context.Context, order []*work, cause error) error {
	if len(order) == 1 {
		return r.failAlone(ctx, order[0], cause)
	}
	mid := len(order) / 2
	for _, half := range [][]*work{order[:mid], order[mid:]} {
		err := r.commit(ctx, half, 0, false)
		switch {
		case err == nil:
		case ctx.Err() != nil || !isStatementFailure(err):
			return err
		default:
			if err := r.bisect(ctx, half, err); err != nil {
				return err
			}
		}
	}
	return nil
}

// failAlone records that the store refused w's partition: it fails as a
// handler error does, from its first message of the batch.
func (r *runner) failAlone(ctx context.Context, w *work, cause error) error {
	p := w.p
	res := r.failed(p, w.msgs[0], fmt.Errorf("%w: %w", ErrStateNotStored, cause), p.failure())
	b, err := r.store.Begin(ctx)
	if err != nil {
		return err
	}
	b.Put(int(p.slot), r.slots[int(p.slot)].token, res.rec)
	revs, err := b.Commit(ctx)
	if err != nil {
		return err
	}
	res.rec.Revision = revs[res.rec.Key]
	r.setRec(p, res.rec)
	p.setFailure(res.fail)
	r.markFailing(p)
	if res.rec.Parked != nil {
		r.metrics.parked.WithLabelValues(r.def.Name()).Inc()
	}
	return nil
}

// isStatementFailure reports an error PostgreSQL gave about what a batch
// wrote (a statement, a value): another partition set may commit. Lost
// connections and timeouts are not.
func isStatementFailure(err error) bool {
	var pgErr *pgconn.PgError
	var se *StatementError
	return errors.As(err, &se) || errors.As(err, &pgErr)
}

// reloadTouched reloads the records of partitions whose batch failed, so the
// cache matches the store again.
func (r *runner) reloadTouched(ctx context.Context, order []*work) {
	for _, w := range order {
		rec, err := r.store.Get(ctx, int(w.p.slot), w.p.key())
		if err != nil {
			r.log.Warn("reload failed; dropping slot", "slot", int(w.p.slot), "error", err)
			r.dropSlot(int(w.p.slot))
			r.managerForget(int(w.p.slot))
			continue
		}
		if rec == nil {
			r.setRec(w.p, Record{Key: w.p.key(), Subject: r.subjectOf(w.p)})
		} else {
			r.setRec(w.p, *rec)
		}
	}
}

// maxDirty bounds the partitions write-behind keeps unwritten.
const maxDirty = 1 << 20

// commit applies each partition's messages in one store batch. A failing
// partition's writes roll back to its savepoint; it is scheduled for retry.
//
// With write-behind, a batch handled while the projection is behind (more
// batches wait) keeps its records in memory: they and every other changed
// partition are written by the first commit that is not behind, or once
// StateWriteInterval has passed. Watermarks are written only with (or
// after) the records they cover.
func (r *runner) commit(ctx context.Context, order []*work, lastSeq uint64, behind bool) error {
	markDue := time.Since(r.lastMark) > time.Second
	deferWrites := r.writeBehind && behind && time.Since(r.lastWrite) < r.spec.WriteEvery && len(r.dirty) < maxDirty
	if len(order) == 0 && (deferWrites || (!markDue && len(r.dirty) == 0)) {
		r.advance(lastSeq, len(r.dirty) == 0)
		return nil
	}
	b, err := r.store.Begin(ctx)
	if err != nil {
		return err
	}
	type result struct {
		w     *work
		rec   Record
		fail  *failure
		state any
	}
	results := make([]result, 0, len(order))
	for _, w := range order {
		res, err := r.applyPartition(ctx, b, w, w.p.failure())
		if err != nil {
			b.Rollback(ctx)
			return err
		}
		results = append(results, result{w, res.rec, res.fail, res.state})
	}
	for _, res := range results {
		if len(res.rec.Outbox) > 0 {
			deferWrites = false // derived events go out after their write
			break
		}
	}
	if deferWrites {
		b.Rollback(ctx)
		for _, res := range results {
			p := res.w.p
			res.rec.Revision = p.rev
			r.setRec(p, res.rec)
			p.setFailure(res.fail)
			r.markFailing(p)
			r.markDirty(p)
			r.keepState(p, res.state)
		}
		r.advance(lastSeq, false)
		return nil
	}
	// Everything written in this batch: its results, then the partitions
	// earlier batches left in memory.
	written := make([]*part, 0, len(results)+len(r.dirty))
	if g, ok := b.(interface{ grow(int) }); ok {
		g.grow(len(results) + len(r.dirty))
	}
	for _, res := range results {
		p := res.w.p
		p.dirty = false
		b.Put(int(p.slot), r.slots[int(p.slot)].token, res.rec)
		written = append(written, p)
	}
	hadDirty := len(r.dirty) > 0
	for _, p := range r.dirty {
		if p.dirty && r.current(p) {
			b.Put(int(p.slot), r.slots[int(p.slot)].token, p.record())
			written = append(written, p)
		}
	}
	marks := markDue || hadDirty
	if marks {
		for n, s := range r.slots {
			wm := max(s.watermark, lastSeq)
			if wm > s.saved {
				b.Watermark(n, s.token, wm)
			}
		}
	}
	r.metrics.writes.WithLabelValues(r.def.Name()).Add(float64(len(written)))
	revs, err := b.Commit(ctx)
	if err != nil {
		if !r.caps.Transactional {
			// Each record was written or not on its own.
			for _, res := range results {
				if rev, ok := revs[res.rec.Key]; ok {
					res.rec.Revision = rev
					r.setRec(res.w.p, res.rec)
					res.w.p.setFailure(res.fail)
					r.markFailing(res.w.p)
				}
			}
		}
		r.commitFailed(ctx, err, order, written, revs)
		return err
	}
	for _, res := range results {
		p := res.w.p
		res.rec.Revision = revs[res.rec.Key]
		r.setRec(p, res.rec)
		p.setFailure(res.fail)
		r.markFailing(p)
		r.keepState(p, res.state)
		if res.fail != nil && res.rec.Parked != nil {
			r.metrics.parked.WithLabelValues(r.def.Name()).Inc()
		}
	}
	for _, p := range written[len(results):] {
		p.rev, p.dirty = revs[p.key()], false
	}
	for _, p := range written {
		r.queueUnsent(p)
	}
	clear(r.dirty)
	r.dirty, r.lastWrite = r.dirty[:0], time.Now()
	for _, s := range r.slots {
		s.watermark = max(s.watermark, lastSeq)
		if marks {
			s.saved = s.watermark
		}
	}
	r.durable = max(r.durable, lastSeq)
	if marks {
		r.lastMark = time.Now()
	}
	if err := r.sendUnsent(ctx); err != nil && ctx.Err() == nil {
		r.log.Warn("derived events not published yet; retrying", "error", err)
	}
	return nil
}

// advance moves the slots' watermarks (in memory) to lastSeq; stored tells
// that everything handled is written.
func (r *runner) advance(lastSeq uint64, stored bool) {
	for _, s := range r.slots {
		s.watermark = max(s.watermark, lastSeq)
	}
	if stored {
		r.durable = max(r.durable, lastSeq)
	}
}

// markDirty remembers a partition whose record only memory holds.
func (r *runner) markDirty(p *part) {
	if !p.dirty {
		p.dirty = true
		r.dirty = append(r.dirty, p)
	}
}

// commitFailed makes the cache match the store after a failed commit. A
// transactional store wrote nothing: the batch's partitions are read
// again. Otherwise each record was written or not on its own: written
// ones take their new revision, and the slots of the others (refused by
// compare-and-set, or with an unknown outcome) are given up, to be loaded
// again from the store by whoever takes them next.
func (r *runner) commitFailed(ctx context.Context, err error, order []*work, written []*part, revs map[string]uint64) {
	var fenced *FencedError
	if errors.As(err, &fenced) {
		for _, s := range fenced.Slots {
			r.dropSlot(s)
			r.managerForget(s)
		}
	}
	if r.caps.Transactional {
		r.reloadTouched(ctx, order)
		return
	}
	lost := map[int]bool{}
	for _, p := range written {
		if rev, ok := revs[p.key()]; ok {
			p.rev, p.dirty = rev, false
			r.queueUnsent(p)
		} else {
			lost[int(p.slot)] = true
		}
	}
	for s := range lost {
		if _, owned := r.slots[s]; owned {
			r.log.Warn("slot given up: its records were not all written", "slot", s, "error", err)
			r.dropSlot(s)
			r.managerForget(s)
		}
	}
	r.dirty = slices.DeleteFunc(r.dirty, func(p *part) bool { return !p.dirty || !r.current(p) })
}

type applied struct {
	rec  Record
	fail *failure
	// state is the decoded state rec.State encodes.
	state any
}

// maxStates bounds the decoded states kept between batches.
const maxStates = 1 << 18

// takeState takes p's decoded state out of the cache, if there.
func (r *runner) takeState(p *part) (any, bool) {
	st, ok := r.states[p]
	if ok {
		delete(r.states, p)
	}
	return st, ok
}

// keepState caches the decoded state of p that its stored state encodes,
// while the projection is behind: a partition a catch-up meets again in
// the next batches is not decoded again. At the head the cache empties.
func (r *runner) keepState(p *part, st any) {
	if st == nil || !r.behind || len(r.states) >= maxStates {
		return
	}
	if r.states == nil {
		r.states = map[*part]any{}
	}
	r.states[p] = st
}

// applyPartition runs the handlers and flush hook of one partition inside
// the batch. Handler errors are not returned: they mark the partition as
// failing. Returned errors are the store's.
func (r *runner) applyPartition(ctx context.Context, b Batch, w *work, prev *failure) (applied, error) {
	p := w.p
	// Handlers work on a state decoded afresh, so a failure leaves nothing
	// behind — or on the one the last batch left, which is taken out of
	// the cache and only put back once this batch is through.
	work, cached := r.takeState(p)
	if !cached {
		var err error
		if work, err = r.def.DecodeState(p.state()); err != nil {
			return r.failed(p, w.msgs[0], err, prev), nil
		}
	}
	// The stored subject stays empty when the key implies it.
	rec := p.record()
	if tb, ok := b.(TenantBatch); ok {
		tenant := rec.Tenant
		if tenant == "" {
			tenant = w.msgs[0].Tenant()
		}
		if tenant != rec.Tenant && rec.Tenant != "" {
			return r.failed(p, w.msgs[0], fmt.Errorf("partition of tenant %q got an event of tenant %q", rec.Tenant, tenant), prev), nil
		}
		if err := tb.Use(ctx, tenant); err != nil {
			if errors.Is(err, ErrUnknownTenant) {
				return r.failed(p, w.msgs[0], err, prev), nil
			}
			return applied{}, err
		}
		rec.Tenant = tenant
	}
	if err := b.Savepoint(ctx); err != nil {
		return applied{}, err
	}
	// The partition's span continues the trace of its last event, the one
	// its derived events answer, linked to the other events' traces.
	ctx, span, traceparent := r.traceBatch(ctx, p.key(), w.msgs)
	defer span.End()
	pc := &projection.PartitionContext{Key: p.key(), Tx: b.Tx(), State: work}
	qb, queues := b.(QueueBatch)
	if queues {
		pc.Queue = qb
	}
	// Events emitted while applying messages the projection replays
	// (pc.Emitted[:quiet]) are dropped, even when the batch goes on past
	// the replay bound.
	quiet, until := 0, max(r.replayUntil(), rec.Replay)
	for _, m := range w.msgs {
		if rec.Tenant != "" && m.Tenant() != rec.Tenant && m.Sequence != rec.Skip {
			if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
				return applied{}, rerr
			}
			return r.failed(p, m, fmt.Errorf("partition of tenant %q got an event of tenant %q", rec.Tenant, m.Tenant()), prev), nil
		}
		if m.Sequence == rec.Skip {
			r.log.Warn("message skipped by operator", "partition", rec.Key, "seq", m.Sequence, "event_type", m.Type)
			rec.Seq, rec.Position, rec.Skip = m.Sequence, m.Position, 0
			continue
		}
		pc.Tenant = m.Tenant()
		if err := r.safeApply(ctx, pc, m); err != nil {
			if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
				return applied{}, rerr
			}
			// Keep what succeeded before the failing message? No: the batch
			// for this partition is all or nothing; retry from its position.
			return r.failed(p, m, err, prev), nil
		}
		rec.Seq, rec.Position = m.Sequence, m.Position
		if m.Sequence <= until {
			quiet = len(pc.Emitted)
		}
	}
	if err := r.safeFlush(ctx, pc); err != nil {
		if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
			return applied{}, rerr
		}
		return r.failed(p, w.msgs[len(w.msgs)-1], err, prev), nil
	}
	if queues && r.eager {
		// Looking for the partition whose statement failed the batch:
		// each partition's statements go now, under its savepoint.
		if err := qb.SendQueued(ctx); err != nil {
			var se *StatementError
			if !errors.As(err, &se) {
				return applied{}, err
			}
			if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
				return applied{}, rerr
			}
			return r.failed(p, w.msgs[len(w.msgs)-1], err, prev), nil
		}
	}
	pc.Emitted = pc.Emitted[quiet:]
	if len(pc.Emitted) > 0 {
		last := w.msgs[len(w.msgs)-1]
		ob, outbox := b.(OutboxBatch)
		kv := r.caps.RecordOutbox
		switch {
		case !r.emitting(last.Sequence) || last.Sequence <= rec.Replay:
		case kv:
			// The events ride in the partition's record, written with its
			// state in one compare-and-set; published after the write.
			// Events JetStream keeps refusing would grow the record past
			// what the bucket takes, and its write would then fail the
			// whole batch: the partition fails first, alone.
			if n := unpublishedBytes(rec.Outbox); n > maxUnpublished {
				if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
					return applied{}, rerr
				}
				// Each attempt of the partition tries its events again:
				// it is not parked while they only wait out a pause.
				delete(r.holds, p)
				return r.failed(p, last, fmt.Errorf("%w: %d events (%d bytes) refused by JetStream, see the log; fix the cause, then retry",
					ErrUnpublished, len(rec.Outbox), n), prev), nil
			}
			gen := r.generation()
			rec.Outbox = slices.Clip(rec.Outbox)
			for _, e := range pc.Emitted {
				rec.Emitted++
				rec.Outbox = append(rec.Outbox, Pending{Generation: gen, Seq: rec.Emitted, Type: e.Type, Payload: e.Payload,
					LinkTo: e.LinkTo, SourceSeq: last.Sequence, SourcePosition: last.Position, TraceParent: traceparent})
			}
		case !outbox:
			if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
				return applied{}, rerr
			}
			return r.failed(p, last, ErrNoOutbox, prev), nil
		default:
			entries := make([]OutboxEntry, len(pc.Emitted))
			gen := r.generation()
			for i, e := range pc.Emitted {
				rec.Emitted++
				entries[i] = OutboxEntry{Projection: r.def.Name(), Partition: p.key(), Subject: EmitSubject(r.def.Name(), p.key()),
					MsgID: msgID(r.def.Name(), gen, p.key(), rec.Emitted), Generation: gen, Seq: rec.Emitted,
					EventType: e.Type, Payload: e.Payload, LinkTo: e.LinkTo, SourceSeq: last.Sequence, SourcePosition: last.Position,
					TraceParent: traceparent}
			}
			if err := ob.Emit(ctx, entries); err != nil {
				return applied{}, err
			}
		}
	}
	if rec.Seq >= rec.Replay {
		rec.Replay = 0 // replayed
	}
	// A state the store cannot take fails its partition alone: failing
	// the commit would fail every partition of the batch, again and again.
	data, err := json.Marshal(work)
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrStateNotStored, err)
	} else if c, ok := r.store.(RecordChecker); ok {
		next := rec
		next.State = data
		err = c.CheckRecord(next)
	}
	if err != nil {
		if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
			return applied{}, rerr
		}
		return r.failed(p, w.msgs[len(w.msgs)-1], err, prev), nil
	}
	rec.State, rec.Parked, rec.Failing, rec.Behind = data, nil, nil, false
	return applied{rec: rec, state: work}, nil
}

func (r *runner) safeApply(ctx context.Context, pc *projection.PartitionContext, m projection.Meta) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("handler panicked: %v", v)
		}
	}()
	return r.def.Apply(ctx, pc, m)
}

func (r *runner) safeFlush(ctx context.Context, pc *projection.PartitionContext) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("flush panicked: %v", v)
		}
	}()
	return r.def.Flush(ctx, pc)
}

// failed records a handler failure: back off, or park after MaxAttempts.
func (r *runner) failed(p *part, m projection.Meta, err error, prev *failure) applied {
	f := &failure{attempts: 1, err: err.Error(), seq: m.Sequence, typ: m.Type, pos: m.Position}
	if prev != nil && prev.seq == m.Sequence {
		f.attempts = prev.attempts + 1
	}
	backoff := r.spec.BackoffMin << min(f.attempts-1, 20)
	if backoff > r.spec.BackoffMax || backoff <= 0 {
		backoff = r.spec.BackoffMax
	}
	f.next = time.Now().Add(backoff)
	rec := p.record()
	if rec.Subject == "" {
		rec.Subject = r.subjectOf(p)
	}
	info := &Parked{Seq: m.Sequence, Position: m.Position, EventType: m.Type, Error: f.err, Attempts: f.attempts, Since: time.Now().UTC()}
	rec.Behind, rec.Failing = true, info
	if f.attempts >= r.spec.MaxAttempts {
		rec.Parked, rec.Failing = info, nil
		r.log.Error("partition parked", "partition", p.key(), "seq", m.Sequence, "event_type", m.Type, "attempts", f.attempts, "error", err)
	} else {
		r.log.Warn("partition failed; retrying", "partition", p.key(), "seq", m.Sequence, "event_type", m.Type, "attempt", f.attempts, "in", backoff, "error", err)
	}
	r.metrics.retries.WithLabelValues(r.def.Name()).Inc()
	return applied{rec: rec, fail: f}
}

// retryDue catches failing partitions up from their own position, one by
// one, with direct gets.
func (r *runner) retryDue(ctx context.Context) {
	now := time.Now()
	for k, p := range r.failing {
		f := p.failure()
		if f == nil || !r.current(p) {
			delete(r.failing, k)
			continue
		}
		if p.parked() != nil || f.next.After(now) {
			continue
		}
		r.catchUp(ctx, p)
	}
}

// catchUp catches a failing partition up from its own position. Reading
// its messages (direct gets, a round trip each) happens off the loop, so
// other partitions go on meanwhile (G4); the loop applies what was read
// when it arrives on r.fetched (caughtUp).
func (r *runner) catchUp(ctx context.Context, p *part) {
	f := p.failure()
	subj := r.subjectOf(p)
	if r.def.Kind() == projection.Global || subj == "" {
		// One partition: read the stream again from its position.
		f.retrying = true
		f.next = time.Now().Add(time.Hour)
		if r.restartAt == 0 || p.seq+1 < r.restartAt {
			r.restartAt = p.seq + 1
		}
		return
	}
	if f.fetching {
		return
	}
	// Not due again until the read is back.
	f.fetching, f.next = true, time.Now().Add(time.Hour)
	from, limit, n := p.seq+1, r.next-1, r.spec.BatchSize
	f.limit, f.held, f.overflow = limit, nil, false
	go func() {
		res := fetched{p: p, from: from - 1}
		res.msgs, res.err = r.readPartition(ctx, subj, from, limit, n)
		select {
		case r.fetched <- res:
		case <-ctx.Done():
		}
	}()
}

// fetched is what catchUp read for a partition that was at position from.
type fetched struct {
	p    *part
	from uint64
	msgs []projection.Message
	err  error
	// held are the partition's live messages after the read's limit;
	// overflow tells that more of them went by.
	held     []projection.Meta
	overflow bool
}

// readPartition reads up to n messages of subj from sequence from to limit.
// It runs off the loop: it touches no runner state.
func (r *runner) readPartition(ctx context.Context, subj string, from, limit uint64, n int) ([]projection.Message, error) {
	var out []projection.Message
	for seq := from; seq <= limit && len(out) < n; {
		m, err := r.source.Next(ctx, subj, seq)
		if errors.Is(err, projection.ErrNoMessage) {
			break
		}
		if err != nil {
			return nil, err
		}
		if m.Sequence > limit {
			break
		}
		out = append(out, m)
		seq = m.Sequence + 1
	}
	return out, nil
}

// caughtUp applies what catchUp read, in a batch of the partition's own.
func (r *runner) caughtUp(ctx context.Context, res fetched) {
	p := res.p
	prev := p.failure()
	if prev == nil || !r.current(p) {
		return // given up with its slot, or resumed otherwise meanwhile
	}
	prev.fetching = false
	held, overflow := prev.held, prev.overflow
	prev.held, prev.overflow = nil, false
	if res.err == nil && p.seq != res.from {
		prev.next = time.Now() // moved meanwhile: read again
		return
	}
	// Live batches went on while the read was in flight; the partition's
	// messages among them were held. They follow the read's messages
	// unless the read stopped short of its limit (a full batch).
	if res.err == nil && len(res.msgs) < r.spec.BatchSize {
		res.held, res.overflow = held, overflow
	}
	if err := r.applyCaughtUp(ctx, p, prev, res); err != nil && ctx.Err() == nil {
		r.log.Warn("catch-up failed", "partition", p.key(), "error", err)
		if f := p.failure(); f != nil {
			f.next = time.Now().Add(r.spec.BackoffMax)
		}
	}
}

func (r *runner) applyCaughtUp(ctx context.Context, p *part, prev *failure, res fetched) error {
	if res.err != nil {
		return res.err
	}
	var metas []projection.Meta
	for _, m := range res.msgs {
		meta, err := r.msgMeta(m)
		if err != nil {
			return err
		}
		if meta.Partition == p.key() {
			metas = append(metas, meta)
		}
	}
	for _, m := range res.held {
		if len(metas) == 0 || m.Sequence > metas[len(metas)-1].Sequence {
			metas = append(metas, m)
		}
	}
	if len(metas) == 0 {
		p.setFailure(nil)
		return nil
	}
	p.setFailure(nil)
	w := &work{p: p, msgs: metas}
	b, err := r.store.Begin(ctx)
	if err != nil {
		p.setFailure(prev)
		return err
	}
	applied, err := r.applyPartition(ctx, b, w, prev)
	if err != nil {
		b.Rollback(ctx)
		p.setFailure(prev)
		return err
	}
	more := len(res.msgs) == r.spec.BatchSize || res.overflow
	if more && applied.fail == nil {
		applied.rec.Behind = true
	}
	b.Put(int(p.slot), r.slots[int(p.slot)].token, applied.rec)
	revs, err := b.Commit(ctx)
	if err != nil {
		p.setFailure(prev)
		if isStatementFailure(err) && r.caps.Transactional && ctx.Err() == nil {
			// The partition's own writes were refused: it fails as a
			// handler error does, and parks after its attempts.
			return r.failAlone(ctx, w, err)
		}
		return err
	}
	applied.rec.Revision = revs[applied.rec.Key]
	r.setRec(p, applied.rec)
	p.setFailure(applied.fail)
	r.queueUnsent(p)
	if err := r.sendUnsent(ctx); err != nil && ctx.Err() == nil {
		r.log.Warn("derived events not published yet; retrying", "error", err)
	}
	if applied.fail == nil && more {
		p.setFailure(&failure{next: time.Now()}) // more to read
	}
	r.markFailing(p)
	return nil
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
		return "project." + projection + "." + typ + "." + subject.EncodeToken(id)
	}
	return "project." + projection + "." + subject.EncodeToken(key)
}
