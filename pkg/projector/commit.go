package projector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/projection"
)

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
			if r.def.Kind() == projectionspec.Global {
				rec.Subject = ""
			}
			r.setRec(p, rec)
			sl.parts.put(p)
		} else if r.eventPrefix == "" && p.x != nil && p.x.subject != "" && p.x.subject != multiSubjects && meta.Subject != p.x.subject &&
			meta.Sequence > p.seq {
			// A custom provider put messages of several subjects in this
			// partition: it can no longer be read alone by subject.
			// Stored at once, with the batch.
			p.x.subject = multiSubjects
			r.markDirty(p)
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
	if err := r.settleLive(ctx); err != nil {
		return err
	}
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
	if len(r.unsent) > 0 {
		r.countUnsent()
	} else {
		r.unsentBytes = 0
	}
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
	if err := r.refreshInline(ctx, b, order); err != nil { // inline_runner.go
		b.Rollback(ctx)
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
