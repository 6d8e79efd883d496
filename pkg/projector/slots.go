package projector

import (
	"context"
	"runtime"
	"strings"
	"time"

	"github.com/jetproj/jetproj/internal/lease"
	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/subject"
)

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

// multiSubjects is the stored subject of a partition whose messages come
// on several subjects (a custom PartitionProvider): it cannot be read
// alone by subject, so its retries, skips and rebuilds read the stream
// again from its position, as a global projection's do.
const multiSubjects = "*"

// subjectOf is the subject to read a partition alone with; empty when
// there is none (the stream is read again from the partition's position).
func (r *runner) subjectOf(p *part) string {
	if p.x != nil && p.x.subject != "" {
		if p.x.subject == multiSubjects {
			return ""
		}
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
	sl := r.slots[int(p.slot)]
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

// slotLoadTimeout bounds fencing and reading one slot.
const slotLoadTimeout = 2 * time.Minute

// loadSlot fences and reads a slot the manager acquired, off the loop (a
// slot of a projection with a million partitions holds ~16k of them), and
// hands it to the loop (installSlot).
func (r *runner) loadSlot(ctx context.Context, slot int, l *lease.Lease) {
	r.loading[slot] = l
	go func() {
		res := loaded{slot: slot, lease: l}
		select {
		case r.loadSem <- struct{}{}:
			// Bounded: the loop waits for every load before it consumes
			// again, so a read that hangs (a lock the store never grants,
			// a request never answered) must become an error, which gives
			// the slot back to be taken again, rather than a silent stall.
			lctx, cancel := context.WithTimeout(ctx, slotLoadTimeout)
			res.parts, res.extras, res.wm, res.err = r.readSlot(lctx, slot, l)
			cancel()
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
		if p.x != nil && len(p.x.outbox) > 0 {
			r.markUnsure(p)
		}
		if f := p.failure(); f != nil && p.parked() == nil && r.def.Kind() == projectionspec.Global && (r.restartAt == 0 || p.seq+1 < r.restartAt) {
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
	for p := range r.unsure {
		if int(p.slot) == slot {
			delete(r.unsure, p)
		}
	}
	r.metrics.slots.WithLabelValues(r.def.Name()).Set(float64(len(r.slots)))
	r.log.Info("slot dropped", "slot", slot)
}
