package projector

import (
	"context"
	"errors"
	"time"

	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/projection"
)

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
	if r.def.Kind() == projectionspec.Global || subj == "" {
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
	more := len(res.msgs) == r.spec.BatchSize || res.overflow
	applied, revs, err := r.commitAlone(ctx, w, prev, more)
	if err != nil && isStatementFailure(err) && r.caps.Transactional && ctx.Err() == nil {
		// PostgreSQL refused a statement: apply again with each message's
		// statements sent after it, which pins the failure on its message.
		r.eager = true
		applied, revs, err = r.commitAlone(ctx, w, prev, more)
		r.eager = false
		if err != nil && isStatementFailure(err) && ctx.Err() == nil {
			p.setFailure(prev)
			// Refused still (its record): it fails as a handler error
			// does, and parks after its attempts.
			return r.failAlone(ctx, w, err)
		}
	}
	if err != nil {
		p.setFailure(prev)
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

// commitAlone applies w, a partition's own batch, and commits it.
func (r *runner) commitAlone(ctx context.Context, w *work, prev *failure, more bool) (applied, map[string]uint64, error) {
	b, err := r.store.Begin(ctx)
	if err != nil {
		return applied{}, nil, err
	}
	res, err := r.applyPartition(ctx, b, w, prev)
	if err != nil {
		b.Rollback(ctx)
		return applied{}, nil, err
	}
	if more && res.fail == nil {
		res.rec.Behind = true
	}
	b.Put(int(w.p.slot), r.slots[int(w.p.slot)].token, res.rec)
	revs, err := b.Commit(ctx)
	return res, revs, err
}
