package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/jetproj/jetproj/internal/derived"
	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
)

// errStore wraps an error sendQueued got that is the store's, not a
// statement's: it fails the batch, not the partition.
var errStore = errors.New("projector: store")

// sendQueued sends the statements queued so far: a statement PostgreSQL
// refused is returned as it is (a partition failure); any other error
// wrapped in errStore.
func sendQueued(ctx context.Context, qb QueueBatch) error {
	err := qb.SendQueued(ctx)
	var se *StatementError
	if err == nil || errors.As(err, &se) {
		return err
	}
	return fmt.Errorf("%w: %w", errStore, err)
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
				// Its record is kept by the primary database, marked with
				// the tenant it names: never taken for the primary's own.
				res := r.failed(p, w.msgs[0], err, prev)
				res.rec.Tenant = tenant
				return res, nil
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
	pc := &projectionspec.PartitionContext{Key: p.key(), Tx: b.Tx(), State: work}
	qb, queues := b.(QueueBatch)
	if queues {
		pc.Queue = qb
	}
	// Events emitted while applying messages the projection replays
	// (pc.Emitted[:quiet]) are dropped, even when the batch goes on past
	// the replay bound.
	quiet, until := 0, max(r.replayUntil(), rec.Replay)
	// causes[i] is the message whose handler made pc.Emitted[i]; the
	// flush hook's answer the partition's last message.
	var causes []int
	inlined := 0 // messages applied inline already
	for i, m := range w.msgs {
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
		if r.appliedInline(rec, m) { // inline_runner.go
			rec.Seq = m.Sequence
			inlined++
			continue
		}
		pc.Tenant = m.Tenant()
		err := r.safeApply(ctx, pc, m)
		if err == nil && queues && r.eager {
			// Looking for the statement that failed the batch: each
			// message's statements go now, so the one refused is pinned
			// on its message.
			err = sendQueued(ctx, qb)
		}
		if err != nil {
			if errors.Is(err, errStore) {
				return applied{}, err
			}
			if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
				return applied{}, rerr
			}
			// Keep what succeeded before the failing message? No: the batch
			// for this partition is all or nothing; retry from its position.
			return r.failed(p, m, err, prev), nil
		}
		rec.Seq, rec.Position = m.Sequence, m.Position
		for len(causes) < len(pc.Emitted) {
			causes = append(causes, i)
		}
		if m.Sequence <= until {
			quiet = len(pc.Emitted)
		}
	}
	if err := r.flushUnlessInlined(ctx, pc, inlined == len(w.msgs)); err != nil {
		if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
			return applied{}, rerr
		}
		return r.failed(p, w.msgs[len(w.msgs)-1], err, prev), nil
	}
	if queues && r.eager {
		// The flush hook's statements, pinned on the last message.
		if err := sendQueued(ctx, qb); err != nil {
			if errors.Is(err, errStore) {
				return applied{}, err
			}
			if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
				return applied{}, rerr
			}
			return r.failed(p, w.msgs[len(w.msgs)-1], err, prev), nil
		}
	}
	for len(causes) < len(pc.Emitted) {
		causes = append(causes, len(w.msgs)-1)
	}
	pc.Emitted, causes = pc.Emitted[quiet:], causes[quiet:]
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
			// The same holds for the projection as a whole: what every
			// partition keeps is bounded too (maxUnpublishedTotal).
			n := unpublishedBytes(rec.Outbox)
			if n > maxUnpublished || r.unsentBytes > r.unsentLimit {
				if rerr := b.RollbackToSavepoint(ctx); rerr != nil {
					return applied{}, rerr
				}
				// Each attempt of the partition tries its events again:
				// it is not parked while they only wait out a pause.
				delete(r.holds, p)
				return r.failed(p, last, fmt.Errorf("%w: %d events (%d bytes; %d bytes in all partitions) refused by JetStream, see the log; fix the cause, then retry",
					ErrUnpublished, len(rec.Outbox), n, r.unsentBytes), prev), nil
			}
			gen := r.generation()
			rec.Outbox = slices.Clip(rec.Outbox)
			for i, e := range pc.Emitted {
				rec.Emitted++
				src := w.msgs[causes[i]]
				rec.Outbox = append(rec.Outbox, Pending{Generation: gen, Seq: rec.Emitted, Type: e.Type, Payload: e.Payload,
					Links: emissionLinks(e), LinkOnly: e.LinkOnly, SourceSeq: src.Sequence, SourcePosition: src.Position, TraceParent: traceparent,
					Metadata: emissionMetadata(src, e), CausationID: r.causationID(src)})
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
				src := w.msgs[causes[i]]
				entries[i] = OutboxEntry{Projection: r.def.Name(), Partition: p.key(), Subject: EmitSubject(r.def.Name(), p.key()),
					MsgID: msgID(r.def.Name(), gen, p.key(), rec.Emitted), Generation: gen, Seq: rec.Emitted,
					EventType: e.Type, Payload: e.Payload, Links: emissionLinks(e), LinkOnly: e.LinkOnly,
					SourceSeq: src.Sequence, SourcePosition: src.Position, TraceParent: traceparent,
					Metadata: emissionMetadata(src, e), CausationID: r.causationID(src)}
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

// emissionLinks are the streams e is linked to.
func emissionLinks(e projectionspec.Emission) []derived.Link {
	if len(e.Links) == 0 {
		return nil
	}
	links := make([]derived.Link, len(e.Links))
	for i, l := range e.Links {
		links[i] = derived.Link{Stream: l.Stream, Existing: l.Existing}
	}
	return links
}

// emissionMetadata is the metadata of a derived event: its source event's
// (trace context aside: the derived event carries its own), then its own,
// which wins.
func emissionMetadata(src projection.Meta, e projectionspec.Emission) map[string]string {
	if len(src.Metadata) == 0 && len(e.Metadata) == 0 {
		return nil
	}
	md := make(map[string]string, len(src.Metadata)+len(e.Metadata))
	for k, v := range src.Metadata {
		if k != contract.HeaderTraceParent && k != contract.HeaderTraceState {
			md[k] = v
		}
	}
	maps.Copy(md, e.Metadata)
	if len(md) == 0 {
		return nil
	}
	return md
}

// causationID names the message a derived event answers: its
// Nats-Msg-Id (event-<position> for the feeder's events), or
// <stream>:<sequence> when it has none.
func (r *runner) causationID(src projection.Meta) string {
	if src.MsgID != "" {
		return src.MsgID
	}
	stream := r.def.SourceConfig().Stream
	if stream == "" {
		stream = "source"
	}
	return stream + ":" + strconv.FormatUint(src.Sequence, 10)
}

func (r *runner) safeApply(ctx context.Context, pc *projectionspec.PartitionContext, m projection.Meta) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("handler panicked: %v", v)
		}
	}()
	return r.def.Apply(ctx, pc, m)
}

func (r *runner) safeFlush(ctx context.Context, pc *projectionspec.PartitionContext) (err error) {
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
