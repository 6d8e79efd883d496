package projector

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/derived"
	"github.com/jetproj/jetproj/pkg/contract"
)

// Derived events of partitions whose state lives in KV are written in the
// partition's record, with the state they derive from, in the same
// compare-and-set (G3). Once the write is acknowledged the projector that
// owns the slot publishes them, in partition order, with the same headers
// and message IDs the emitter uses. A projector that dies before that
// leaves them in the record; whoever loads the slot next publishes them,
// skipping what the streams already hold (derived.Tracker reads the last
// message of each subject first), so each is published once.

// maxTracked bounds the subjects whose last mark a runner remembers.
const maxTracked = 100_000

// maxUnpublished bounds the bytes of derived events a partition's record
// keeps while JetStream refuses them; past it the partition fails with
// ErrUnpublished (and is parked after its attempts) rather than its record
// outgrowing the bucket's largest value.
const maxUnpublished = 256 << 10

// maxUnpublishedTotal bounds the bytes of refused derived events all of a
// projection's partitions keep: past it, a partition that emits fails with
// ErrUnpublished (retried, then parked) instead of adding more — memory and
// the bucket would otherwise grow with the number of partitions.
const maxUnpublishedTotal = 64 << 20

// countUnsent sets r.unsentBytes: what the partitions waiting to publish
// hold. Computed once per batch.
func (r *runner) countUnsent() {
	r.unsentBytes = 0
	for _, p := range r.unsent {
		if p.x != nil {
			r.unsentBytes += unpublishedBytes(p.x.outbox)
		}
	}
}

// unpublishedBytes is about what events take in a record.
func unpublishedBytes(events []Pending) int {
	n := 0
	for _, e := range events {
		n += len(e.Payload) + e.textLen() + 64
	}
	return n
}

// queueUnsent remembers a written partition whose record holds derived
// events to publish.
func (r *runner) queueUnsent(p *part) {
	if p.x != nil && len(p.x.outbox) > 0 {
		r.unsent = append(r.unsent, p)
	}
}

// unsentRetry is when the queued partitions should be tried again: within
// a second, sooner when a refused one's pause ends before.
func (r *runner) unsentRetry(now time.Time) time.Duration {
	wait := time.Second
	for _, p := range r.unsent {
		if h := r.holds[p]; h != nil {
			wait = min(wait, max(h.Until.Sub(now), time.Millisecond))
		}
	}
	return wait
}

// sendUnsent publishes the derived events of the queued partitions. A
// partition whose event JetStream refuses stays queued and is tried again
// after a pause that grows from 250 ms to 30 s; the others go on.
func (r *runner) sendUnsent(ctx context.Context) error {
	if len(r.unsent) == 0 {
		return nil
	}
	if r.marks == nil || r.marks.Len() > maxTracked {
		r.marks = derived.NewTracker(r.js)
	}
	if r.holds == nil {
		r.holds = map[*part]*derived.Backoff{}
	}
	now := time.Now()
	seen := make(map[*part]bool, len(r.unsent))
	var parts, waiting []*part
	for _, p := range r.unsent {
		switch {
		case seen[p]:
		case p.x == nil || len(p.x.outbox) == 0 || !r.current(p):
			delete(r.holds, p)
		case r.holds[p] != nil && now.Before(r.holds[p].Until):
			seen[p] = true
			waiting = append(waiting, p)
		default:
			seen[p] = true
			parts = append(parts, p)
		}
	}
	r.seedMarks(parts)
	type pend struct {
		p    *part
		subj string
		mark derived.Mark
		fut  jetstream.PubAckFuture
	}
	published := 0
	// refused holds the partitions JetStream refused, and targets the
	// subjects each tried: their marks are read again next time (a refused
	// publish may have landed after all).
	refused := map[*part]error{}
	var first *part
	targets := map[*part][]string{}
	refuse := func(p *part, err error) {
		if refused[p] == nil {
			refused[p] = err
			if first == nil {
				first = p
			}
		}
	}
	// Round i publishes every partition's i-th event: a partition's events
	// go out in order, partitions side by side. A partition refused in a
	// round sends nothing more.
	for i := 0; ; i++ {
		var pends []pend
		more := false
		for _, p := range parts {
			if i >= len(p.x.outbox) || refused[p] != nil {
				continue
			}
			more = true
			e := r.derivedEvent(p, p.x.outbox[i])
			// Each target is checked and published on its own: a stream
			// holding the event already is skipped, the others get it.
			to, err := r.marks.Targets(ctx, contract.ProjectionStream(r.def.Name()), e, r.streamReplicas)
			if err != nil {
				refuse(p, err)
				continue
			}
			for _, t := range to {
				targets[p] = append(targets[p], t.Subject)
				last, err := r.marks.Last(ctx, t.Stream, t.Subject)
				if err != nil {
					refuse(p, err)
					break
				}
				if !last.Before(e.Mark()) {
					continue // the stream holds it already
				}
				fut, err := r.js.PublishMsgAsync(e.Msg(t.Subject))
				if err != nil {
					refuse(p, fmt.Errorf("publish %s: %w", t.Subject, err))
					break
				}
				pends = append(pends, pend{p, t.Subject, e.Mark(), fut})
			}
		}
		if !more {
			break
		}
		for _, pd := range pends {
			select {
			case ack := <-pd.fut.Ok():
				// An acknowledgement of a duplicate that the stream does not
				// hold means JetStream dropped the event: it stays in the
				// record and the partition waits, as if refused.
				if err := r.marks.Acked(ctx, pd.fut.Msg(), ack); err != nil {
					if errors.Is(err, derived.ErrUnexpectedDuplicate) {
						r.log.Error("derived event discarded by JetStream as a duplicate of another message; the partition waits", "partition", pd.p.key(), "error", err)
					}
					refuse(pd.p, err)
					continue
				}
				published++
			case err := <-pd.fut.Err():
				refuse(pd.p, fmt.Errorf("publish %s: %w", pd.subj, err))
			case <-ctx.Done():
				r.marks.Forget()
				return ctx.Err()
			}
		}
	}
	r.metrics.emitted.WithLabelValues(r.def.Name()).Add(float64(published))
	// Published: the record keeps them until its next write.
	left := waiting
	for _, p := range parts {
		if refused[p] != nil {
			r.marks.Drop(targets[p]...)
			r.markUnsure(p)
			h := r.holds[p]
			if h == nil {
				h = &derived.Backoff{}
				r.holds[p] = h
			}
			h.Refused(now)
			left = append(left, p)
			continue
		}
		delete(r.holds, p)
		delete(r.unsure, p)
		p.x.outbox = nil
		if p.x.empty() {
			p.x = nil
		}
	}
	clear(r.unsent)
	r.unsent = append(r.unsent[:0], left...)
	r.metrics.waiting.WithLabelValues(r.def.Name()).Set(float64(len(left)))
	if first != nil {
		return fmt.Errorf("projector: derived events of %d partition(s) not published yet (first %s): %w", len(refused), first.key(), refused[first])
	}
	return nil
}

// markUnsure remembers that p's subject may hold events this runner did not
// see acknowledged.
func (r *runner) markUnsure(p *part) {
	if r.unsure == nil {
		r.unsure = map[*part]bool{}
	}
	r.unsure[p] = true
}

// seedMarks tells the tracker the last event on the own subject of each of
// parts that is not unsure: the one before its first unpublished event.
// Such a partition's earlier events were all acknowledged (its record held
// none unpublished when this runner loaded it, and this runner, the slot's
// only publisher since, saw each acknowledged), so its subject holds none
// of those to come; reading the subject's last message from the stream —
// a request per partition, 20,000 of them for as many wallets after a
// start — would tell nothing more.
func (r *runner) seedMarks(parts []*part) {
	for _, p := range parts {
		if r.unsure[p] || len(p.x.outbox) == 0 {
			continue
		}
		subj := EmitSubject(r.def.Name(), p.key())
		if !r.marks.Known(subj) {
			first := p.x.outbox[0]
			r.marks.Set(subj, derived.Mark{Gen: first.Generation, Seq: first.Seq - 1})
		}
	}
}

// derivedEvent is a stored derived event of p, ready to publish.
func (r *runner) derivedEvent(p *part, e Pending) derived.Event {
	return pendingEvent(r.def.Name(), p.key(), e)
}

// pendingEvent is the derived event e of the partition key of projection
// name.
func pendingEvent(name, key string, e Pending) derived.Event {
	return derived.Event{Projection: name, Partition: key, Subject: EmitSubject(name, key),
		MsgID: msgID(name, e.Generation, key, e.Seq), Generation: e.Generation, Seq: e.Seq,
		Type: e.Type, Payload: e.Payload, Links: e.links(), LinkOnly: e.LinkOnly, SourceSeq: e.SourceSeq, SourcePosition: e.SourcePosition,
		TraceParent: e.TraceParent, Metadata: e.Metadata, CausationID: e.CausationID}
}

// publishLeftovers publishes the derived events that the records of a KV
// store hold and the streams do not, before a reset removes the records:
// they were committed with their state, and a reset replays without
// emitting, so nobody would publish them later. It returns how many it
// published.
func publishLeftovers(ctx context.Context, js jetstream.JetStream, name string, st *KVStore, slots, replicas int) (int, error) {
	marks := derived.NewTracker(js)
	var published atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for slot := range slots {
		recs, _, err := st.LoadSlot(gctx, slot)
		if err != nil {
			if werr := g.Wait(); werr != nil {
				err = werr // the cause of a cancelled load
			}
			return int(published.Load()), err
		}
		for _, rec := range recs {
			if len(rec.Outbox) == 0 {
				continue
			}
			g.Go(func() error {
				for _, p := range rec.Outbox {
					e := pendingEvent(name, rec.Key, p)
					targets, err := marks.Targets(gctx, contract.ProjectionStream(name), e, replicas)
					if err != nil {
						return fmt.Errorf("projector: %w", err)
					}
					for _, t := range targets {
						last, err := marks.Last(gctx, t.Stream, t.Subject)
						if err != nil {
							return fmt.Errorf("projector: derived events of %s: %w", rec.Key, err)
						}
						if !last.Before(e.Mark()) {
							continue
						}
						msg := e.Msg(t.Subject)
						ack, err := js.PublishMsg(gctx, msg)
						if err != nil {
							return fmt.Errorf("projector: publish %s: %w", t.Subject, err)
						}
						if err := marks.Acked(gctx, msg, ack); err != nil {
							return fmt.Errorf("projector: derived events of %s: %w", rec.Key, err)
						}
						published.Add(1)
					}
				}
				return nil
			})
		}
	}
	err := g.Wait()
	return int(published.Load()), err
}

// msgID is the Nats-Msg-Id of a partition's seq-th derived event of a
// generation: the key is escaped, or hashed when long (derived.MsgID), so
// that keys differing only in bytes that headers cannot carry get
// distinct ids.
func msgID(projection string, gen int, key string, seq uint64) string {
	return derived.MsgID(projection, gen, key, seq)
}
