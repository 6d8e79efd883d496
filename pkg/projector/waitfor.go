package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/subject"
)

// EventRef names an event by its event-store position and aggregate, as
// eventstore.Append's caller knows them.
type EventRef struct {
	Position      int64
	AggregateType string
	AggregateID   string
}

// WaitFor waits until the projection has applied the event at position of
// the event store — read-your-writes after eventstore.Append:
//
//	res, err := eventstore.Append(ctx, pool, "wallet", id, eventstore.ExpectAny, ev)
//	…
//	err = projector.WaitFor(ctx, js, pool, "wallet_balance", res.LastPosition)
//
// It returns nil once the event's partition has applied it and every slot
// of the projection has applied and stored what came before it in the
// source stream (other partitions that are failing or parked aside); for
// an event the projection does not read (its filter subjects), once the
// projection has applied everything it reads before it. The read model
// shows the event when WaitFor returns.
//
// It looks the event's aggregate up in db (one query by primary key) and
// then watches: the event's subject until the feeder has published it,
// and the progress the replicas publish in KV bucket
// contract.ProgressBucket while someone waits. It never polls the database.
//
// Errors: ErrUnknownProjection, ErrEventNotFound, ErrEventNotInStream,
// ErrNotWaitable, a *ParkedError (errors.Is ErrParked) when the event's
// partition is parked, and an error wrapping ctx.Err() that tells how far
// the projection got when ctx ends first. Many waits are cheaper through
// one Waiter.
func WaitFor(ctx context.Context, js jetstream.JetStream, db eventstore.Querier, projection string, position int64) error {
	w := NewWaiter(js, db)
	defer w.Close()
	return w.WaitFor(ctx, projection, position)
}

// Waiter waits for projections to apply events. It keeps one watch of the
// progress bucket per projection, shared by all its waits; it is safe for
// concurrent use. Close it when done.
type Waiter struct {
	js jetstream.JetStream
	nc *nats.Conn
	db eventstore.Querier

	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	kv      jetstream.KeyValue
	watches map[string]*progressWatch
	streams map[string]jetstream.Stream
}

// NewWaiter returns a Waiter. db is the event store, for WaitFor; it may be
// nil when only WaitForEvent is used.
func NewWaiter(js jetstream.JetStream, db eventstore.Querier) *Waiter {
	ctx, cancel := context.WithCancel(context.Background())
	return &Waiter{js: js, nc: js.Conn(), db: db, ctx: ctx, cancel: cancel,
		watches: map[string]*progressWatch{}, streams: map[string]jetstream.Stream{}}
}

// Close stops the Waiter's watches; waits in progress return an error.
// Safe to call twice.
func (w *Waiter) Close() {
	w.cancel()
	w.wg.Wait()
}

// WaitFor is the package's WaitFor with this Waiter's watches.
func (w *Waiter) WaitFor(ctx context.Context, projection string, position int64) error {
	if w.db == nil {
		return errors.New("projector: WaitFor needs the event store (NewWaiter with a db), or use WaitForEvent")
	}
	ev := EventRef{Position: position}
	err := w.db.QueryRow(ctx, `SELECT aggregate_type, aggregate_id FROM eventstore.events WHERE position = $1`, position).
		Scan(&ev.AggregateType, &ev.AggregateID)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %d", ErrEventNotFound, position)
	}
	if err != nil {
		return fmt.Errorf("projector: look up event %d: %w", position, err)
	}
	return w.WaitForEvent(ctx, projection, ev)
}

// WaitForEvent is WaitFor for an event whose aggregate the caller knows
// (no event-store lookup).
func (w *Waiter) WaitForEvent(ctx context.Context, projection string, ev EventRef) error {
	pw, err := w.watch(ctx, projection)
	if err != nil {
		return err
	}
	pw.begin(w)
	defer pw.end()

	t := waitTarget{ev: ev, lookNow: true}
	for {
		v, changed, werr := pw.state()
		if werr != nil {
			return werr
		}
		done, why, err := w.check(ctx, pw, v, &t)
		if err != nil || done {
			return err
		}
		var arrived <-chan *nats.Msg
		if t.sub != nil {
			arrived = t.arrivals
		}
		select {
		case <-ctx.Done():
			t.close()
			return fmt.Errorf("projector: %s has not applied position %d yet (%s): %w", projection, ev.Position, why, ctx.Err())
		case <-w.ctx.Done():
			t.close()
			return errors.New("projector: waiter closed")
		case <-changed:
		case m := <-arrived:
			// The feeder published an event of the aggregate: once
			// the stream stored it, it can be found. Until then,
			// look again soon.
			if p, _ := strconv.ParseInt(m.Header.Get(contract.HeaderEventPosition), 10, 64); p >= ev.Position {
				t.lookNow, t.backoff = true, 0
			}
		case <-t.retry:
			t.retry, t.lookNow = nil, true
		}
	}
}

// waitTarget is what one wait learned about its event.
type waitTarget struct {
	ev      EventRef
	located bool
	seq     uint64 // the event's stream sequence
	subj    string
	reads   bool   // the projection's filter takes the subject
	key     string // its partition, when the provider is known
	// Not yet published: a core subscription on its subject.
	sub      *nats.Subscription
	arrivals chan *nats.Msg
	lookNow  bool             // look for it in the stream at the next check
	retry    <-chan time.Time // look again then
	backoff  time.Duration
	// For an event the projection does not read: the first message it
	// reads after the slowest slot's position (nextAfter), at that
	// position (nextFrom).
	nextFrom, nextAfter uint64
	nextKnown           bool
}

func (t *waitTarget) close() {
	if t.sub != nil {
		_ = t.sub.Unsubscribe()
		t.sub = nil
	}
}

// check looks at the projection's progress: done when the event is
// applied; why says what is missing otherwise.
func (w *Waiter) check(ctx context.Context, pw *progressWatch, v *progressView, t *waitTarget) (done bool, why string, err error) {
	if v == nil {
		return false, "no replica has published its progress", nil
	}
	ref := v.ref
	if ref.Stream == "" {
		return false, "", fmt.Errorf("%w: %s", ErrNotWaitable, pw.name)
	}
	if !t.located {
		// Look (again) at first, when the event's subject saw a
		// publication, and at a slowing pace meanwhile (a publication can
		// be stored just after a look, seen by no subscription yet):
		// progress does not tell where the event is.
		if !t.lookNow {
			return false, "the feeder has not published the event yet", nil
		}
		t.lookNow = false
		ok, err := w.locate(ctx, ref, t)
		if err != nil {
			t.close()
			return false, "", err
		}
		if !ok {
			if t.retry == nil {
				t.backoff = min(max(2*t.backoff, 2*time.Millisecond), 100*time.Millisecond)
				t.retry = time.After(t.backoff)
			}
			return false, "the feeder has not published the event yet", nil
		}
		t.close()
	}
	if v.missing >= 0 {
		return false, fmt.Sprintf("slot %d has no owner that published its progress", v.missing), nil
	}
	low := v.low
	if !t.reads {
		if low >= t.seq {
			return true, "", nil
		}
		// Passed once no message it reads lies between its slowest
		// slot and the event.
		if !t.nextKnown || t.nextFrom != low {
			next, err := w.nextRead(ctx, ref, low+1)
			if err != nil {
				return false, "", err
			}
			t.nextFrom, t.nextAfter, t.nextKnown = low, next, true
		}
		if t.nextAfter == 0 || t.nextAfter > t.seq {
			return true, "", nil
		}
		return false, fmt.Sprintf("applied up to stream sequence %d; the event is at %d (not read by the projection; it reads %d before it)", low, t.seq, t.nextAfter), nil
	}
	if low < t.seq {
		return false, fmt.Sprintf("applied up to stream sequence %d; the event is at %d", low, t.seq), nil
	}
	// Every slot passed the event: unless its partition is failing.
	for _, sp := range v.failing {
		for _, f := range sp.Failing {
			if f.Seq >= t.seq || !t.holds(ref.Partitions, f) {
				continue
			}
			if f.Parked {
				return false, "", &ParkedError{Projection: pw.name, Partition: f.Key, Seq: f.FailedSeq, EventType: f.EventType, Cause: f.Error}
			}
			return false, fmt.Sprintf("partition %s is retrying after an error at stream sequence %d: %s", f.Key, f.FailedSeq, f.Error), nil
		}
		if sp.Truncated {
			return false, "more partitions fail than the progress lists; cannot tell whether the event's is one", nil
		}
	}
	return true, "", nil
}

// progressView is a projection's progress merged from its replicas'
// entries: computed once per update, read by every wait.
type progressView struct {
	ref     ReplicaProgress // an entry of the newest generation
	missing int             // a slot no entry covers; -1 when all are
	low     uint64          // the lowest slot position
	failing []*SlotProgress // slots with failing partitions
}

// mergeProgress merges the entries of the newest generation (reset and
// rebuild start one), each slot from its latest owner.
func mergeProgress(entries map[string]ReplicaProgress) *progressView {
	if len(entries) == 0 {
		return nil
	}
	v := &progressView{missing: -1}
	gen := -1
	for _, e := range entries {
		if e.Generation > gen {
			gen, v.ref = e.Generation, e
		}
	}
	best := make([]*SlotProgress, max(v.ref.Slots, 1))
	for _, e := range entries {
		if e.Generation != gen {
			continue
		}
		for i := range e.Owned {
			sp := &e.Owned[i]
			if sp.Slot < 0 || sp.Slot >= len(best) {
				continue
			}
			if b := best[sp.Slot]; b == nil || sp.Token > b.Token || (sp.Token == b.Token && sp.Seq > b.Seq) {
				best[sp.Slot] = sp
			}
		}
	}
	for n, sp := range best {
		if sp == nil {
			v.missing = n
			return v
		}
		if n == 0 || sp.Seq < v.low {
			v.low = sp.Seq
		}
		if len(sp.Failing) > 0 || sp.Truncated {
			v.failing = append(v.failing, sp)
		}
	}
	return v
}

// holds reports whether failing partition f may hold the event.
func (t *waitTarget) holds(kind string, f FailingPartition) bool {
	if t.key != "" {
		return f.Key == t.key
	}
	// A custom provider: the partition is unknown here; one whose
	// messages came on the event's subject, or on several subjects, may
	// hold it.
	return f.Subject == t.subj || f.Subject == "" || f.Subject == multiSubjects || kind == "global"
}

// locate finds the event's message in the source stream; false while the
// feeder has not published it (a subscription then watches its subject).
func (w *Waiter) locate(ctx context.Context, p ReplicaProgress, t *waitTarget) (bool, error) {
	s, err := w.stream(ctx, p.Stream)
	if err != nil {
		return false, err
	}
	if t.subj == "" {
		prefix := streamPrefix(s.CachedInfo().Config.Subjects)
		if prefix == "" {
			return false, fmt.Errorf("%w: stream %s is not a feeder's (subjects %v)", ErrNotWaitable, p.Stream, s.CachedInfo().Config.Subjects)
		}
		if t.subj, err = subject.EventWithPrefix(prefix, t.ev.AggregateType, t.ev.AggregateID); err != nil {
			return false, err
		}
	}
	raw, err := findEvent(ctx, s, t.subj, t.ev.Position)
	if err != nil || raw == nil {
		if err == nil && t.sub == nil {
			// Watch the subject, then look again: the event cannot be
			// published unseen in between.
			t.arrivals = make(chan *nats.Msg, 64)
			if t.sub, err = w.nc.ChanSubscribe(t.subj, t.arrivals); err != nil {
				return false, err
			}
			if err = w.nc.FlushWithContext(ctx); err != nil {
				return false, err
			}
			return w.locate(ctx, p, t)
		}
		return false, err
	}
	t.located, t.seq = true, raw.Sequence
	t.reads = len(p.Subjects) == 0
	for _, f := range p.Subjects {
		if subjectMatches(f, raw.Subject) {
			t.reads = true
		}
	}
	msg := projection.Message{Subject: raw.Subject, Header: raw.Header, Data: raw.Data, Sequence: raw.Sequence}
	var prov projection.PartitionProvider
	switch kind := p.Partitions; {
	case kind == "aggregate":
		prov = projection.AggregatePartitions{}
	case kind == "global":
		prov = projection.GlobalPartitions{}
	case strings.HasPrefix(kind, "subject:"):
		skip, _ := strconv.Atoi(strings.TrimPrefix(kind, "subject:"))
		prov = projection.SubjectPartitions{Skip: skip}
	}
	if prov != nil {
		t.key, _ = prov.Partition(msg)
	}
	return true, nil
}

// findEvent returns the message of the event at position on subj, nil when
// it is not in the stream yet. An aggregate's events are in the stream in
// version order, so in position order: from the subject's last message, a
// binary search over "next message on subj" reads a few of them.
func findEvent(ctx context.Context, s jetstream.Stream, subj string, position int64) (*jetstream.RawStreamMsg, error) {
	last, err := s.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	switch lp := eventPosition(last); {
	case lp == position:
		return last, nil
	case lp < position:
		return nil, nil
	}
	lo, hi := uint64(1), last.Sequence-1
	for lo <= hi && hi > 0 {
		mid := lo + (hi-lo)/2
		m, err := s.GetMsg(ctx, mid, jetstream.WithGetMsgSubject(subj))
		if err != nil {
			return nil, err
		}
		switch mp := eventPosition(m); {
		case mp == position:
			return m, nil
		case mp < position:
			lo = m.Sequence + 1
		default:
			hi = mid - 1
		}
	}
	return nil, fmt.Errorf("%w: position %d on %s (later events of its aggregate are)", ErrEventNotInStream, position, subj)
}

func eventPosition(m *jetstream.RawStreamMsg) int64 {
	p, _ := strconv.ParseInt(m.Header.Get(contract.HeaderEventPosition), 10, 64)
	return p
}

// nextRead is the sequence of the first message at or after from that the
// projection reads; 0 when there is none.
func (w *Waiter) nextRead(ctx context.Context, p ReplicaProgress, from uint64) (uint64, error) {
	s, err := w.stream(ctx, p.Stream)
	if err != nil {
		return 0, err
	}
	var next uint64
	for _, f := range p.Subjects {
		m, err := s.GetMsg(ctx, from, jetstream.WithGetMsgSubject(f))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if next == 0 || m.Sequence < next {
			next = m.Sequence
		}
	}
	return next, nil
}

// streamPrefix is the subject prefix of a feeder's stream ("events" for
// subjects "events.>").
func streamPrefix(subjects []string) string {
	for _, s := range subjects {
		if p, ok := strings.CutSuffix(s, ".>"); ok && !strings.ContainsAny(p, "*>") {
			return p
		}
	}
	return ""
}

// subjectMatches reports whether subject subj matches filter f (with the
// wildcards * and >).
func subjectMatches(f, subj string) bool {
	ft, st := strings.Split(f, "."), strings.Split(subj, ".")
	for i, tok := range ft {
		if tok == ">" {
			return len(st) > i
		}
		if i >= len(st) || (tok != "*" && tok != st[i]) {
			return false
		}
	}
	return len(ft) == len(st)
}

func (w *Waiter) stream(ctx context.Context, name string) (jetstream.Stream, error) {
	w.mu.Lock()
	s, ok := w.streams[name]
	w.mu.Unlock()
	if ok {
		return s, nil
	}
	s, err := w.js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("projector: source stream %s: %w", name, err)
	}
	w.mu.Lock()
	w.streams[name] = s
	w.mu.Unlock()
	return s, nil
}

// progressWatch follows one projection's progress entries.
type progressWatch struct {
	name string
	nc   *nats.Conn

	mu       sync.Mutex
	entries  map[string]ReplicaProgress // owned by follow
	view     *progressView
	err      error
	changed  chan struct{} // closed at the next change
	waiting  int
	lastWant time.Time
}

// state returns the merged progress (not to be modified), a channel
// closed at the next change, and the watch's error.
func (pw *progressWatch) state() (*progressView, <-chan struct{}, error) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	return pw.view, pw.changed, pw.err
}

// begin counts a wait and asks the replicas to publish, unless asked
// recently; end uncounts it.
func (pw *progressWatch) begin(w *Waiter) {
	pw.mu.Lock()
	pw.waiting++
	ask := time.Since(pw.lastWant) > progressWant/3
	if ask {
		pw.lastWant = time.Now()
	}
	pw.mu.Unlock()
	if ask {
		_ = pw.nc.Publish(contract.ProgressSubject(pw.name), nil)
	}
}

func (pw *progressWatch) end() {
	pw.mu.Lock()
	pw.waiting--
	pw.mu.Unlock()
}

// watch returns the projection's watch, starting it on first use.
func (w *Waiter) watch(ctx context.Context, name string) (*progressWatch, error) {
	w.mu.Lock()
	pw, ok := w.watches[name]
	w.mu.Unlock()
	if ok {
		return pw, nil
	}
	if w.ctx.Err() != nil {
		return nil, errors.New("projector: waiter closed")
	}
	reg, err := w.js.KeyValue(ctx, contract.RegistryBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrUnknownProjection, name)
	}
	if err != nil {
		return nil, fmt.Errorf("projector: registry: %w", err)
	}
	if _, err := reg.Get(ctx, name); errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrUnknownProjection, name)
	} else if err != nil {
		return nil, fmt.Errorf("projector: registry: %w", err)
	}
	w.mu.Lock()
	kv := w.kv
	w.mu.Unlock()
	if kv == nil {
		if kv, err = openProgress(ctx, w.js, 1); err != nil {
			return nil, fmt.Errorf("projector: progress bucket: %w", err)
		}
	}
	kw, err := kv.Watch(w.ctx, name+".>")
	if err != nil {
		return nil, fmt.Errorf("projector: watch progress of %s: %w", name, err)
	}
	pw = &progressWatch{name: name, nc: w.nc, entries: map[string]ReplicaProgress{}, changed: make(chan struct{})}
	w.mu.Lock()
	if other, ok := w.watches[name]; ok {
		w.mu.Unlock()
		_ = kw.Stop()
		return other, nil
	}
	w.kv, w.watches[name] = kv, pw
	w.mu.Unlock()
	w.wg.Go(func() { pw.follow(w.ctx, kw) })
	return pw, nil
}

// follow applies the watch's updates until ctx ends, and asks the replicas
// to keep publishing while waits are in progress.
func (pw *progressWatch) follow(ctx context.Context, kw jetstream.KeyWatcher) {
	defer kw.Stop() //nolint:errcheck
	tick := time.NewTicker(progressWant / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			pw.mu.Lock()
			ask := pw.waiting > 0 && time.Since(pw.lastWant) >= progressWant/3
			if ask {
				pw.lastWant = time.Now()
			}
			pw.mu.Unlock()
			if ask {
				_ = pw.nc.Publish(contract.ProgressSubject(pw.name), nil)
			}
		case e, ok := <-kw.Updates():
			if !ok {
				pw.mu.Lock()
				pw.err = errors.New("projector: progress watch ended")
				close(pw.changed)
				pw.changed = make(chan struct{})
				pw.mu.Unlock()
				return
			}
			if e == nil {
				continue
			}
			var p ReplicaProgress
			if e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &p) == nil {
				pw.entries[e.Key()] = p
			} else {
				delete(pw.entries, e.Key())
			}
			v := mergeProgress(pw.entries)
			pw.mu.Lock()
			pw.view = v
			close(pw.changed)
			pw.changed = make(chan struct{})
			pw.mu.Unlock()
		}
	}
}
