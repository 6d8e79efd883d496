package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
)

// InlineProjection applies a projection inline: in the transaction that
// appends its events (eventstore.WithInline), so the read model changes
// with the events or not at all and a handler's error fails the append.
//
// It keeps the partition's record in jetproj.partitions as the
// asynchronous runner does — state, derived-event count, and as position
// the event-store position of the last event applied — so the same
// definition also runs in a projector: to rebuild the read model through
// the stream, or to catch up on events appended without it. The runner
// skips the events whose position the record has passed, so nothing is
// applied twice. Derived events go to jetproj.outbox in the appending
// transaction; the emitter relays them.
//
// When the partition's record is behind the store — events appended
// without inline projections, a partition rebuilt or reset, a projection
// added to a store that already has events — ApplyInline first applies
// the aggregate's events it has not seen, quietly (no derived events, as
// a replay), so the read model never skips an event.
type InlineProjection struct {
	def    projectionspec.Spec
	reg    *Registry
	prefix string
	types  map[string]bool
}

var _ eventstore.InlineProjection = (*InlineProjection)(nil)

// InlineOption configures Inline.
type InlineOption func(*InlineProjection)

// InlineRegistry gives the inline projection the registry (see
// OpenRegistry; with its Watch running, entries are read from memory):
// its derived events then carry the projection's current generation,
// and none are written while its deployment is not live. Without it they
// carry generation 0 and are written unless the definition is NotLive —
// right for a projection that was never reset, rebuilt or revived.
func InlineRegistry(reg *Registry) InlineOption {
	return func(p *InlineProjection) { p.reg = reg }
}

// Inline returns p applied inline, for eventstore.WithInline. p must be
// marked projection.Inline (and so be partitioned by aggregate, with a
// Postgres read model).
func Inline(p projection.Definer, opts ...InlineOption) (*InlineProjection, error) {
	d := projectionspec.Of(p)
	if err := d.Validate(); err != nil {
		return nil, err
	}
	if !d.IsInline() {
		return nil, fmt.Errorf("%w: %s", ErrNotInline, d.Name())
	}
	ip := &InlineProjection{def: d, prefix: d.AggregatePrefix(), types: map[string]bool{}}
	for _, t := range d.SourceConfig().AggregateTypes {
		ip.types[t] = true
	}
	for _, o := range opts {
		o(ip)
	}
	return ip, nil
}

// Name is the projection's name.
func (p *InlineProjection) Name() string { return p.def.Name() }

// Init creates the jetproj tables and runs the projection's init hook, for
// an application that appends with inline projections before (or without)
// `projector init`. Like Init, it is idempotent.
func (p *InlineProjection) Init(ctx context.Context) error {
	if err := NewPGStore(p.def.Settings().Pool, p.def.Name()).Init(ctx); err != nil {
		return err
	}
	init := p.def.Hooks().Init
	if err := runHook(ctx, p.def, init); err != nil {
		return fmt.Errorf("projector: %s: init hook: %w", p.def.Name(), err)
	}
	return nil
}

const recordColumns = `partition, subject, behind, failing, skip, emitted, replay, seq, position, state, parked, revision, updated_at, tenant`

// ApplyInline implements eventstore.InlineProjection: events are one
// aggregate's, just appended in tx.
func (p *InlineProjection) ApplyInline(ctx context.Context, tx pgx.Tx, events []eventstore.Event) error {
	if len(events) == 0 || !p.types[events[0].AggregateType] {
		return nil
	}
	name := p.def.Name()
	key := events[0].AggregateType + "/" + events[0].AggregateID
	skey := storedString(key)
	fail := func(m *projection.Meta, err error) error {
		ie := &InlineError{Projection: name, Partition: key, Err: err}
		if m != nil {
			ie.Position, ie.EventType = m.Position, m.Type
		}
		return ie
	}

	// One round trip: the partition's record, created if missing and
	// locked until the append commits (the runner's batches wait for it,
	// and it for them), and the aggregate's events the record has not
	// seen before these.
	var rec *Record
	var earlier []eventstore.Event
	batch := &pgx.Batch{}
	batch.Queue(`INSERT INTO jetproj.partitions (projection, partition, slot, seq) VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING`,
		name, skey, SlotOf(key, p.def.Settings().Slots))
	batch.Queue(`SELECT `+recordColumns+` FROM jetproj.partitions WHERE projection = $1 AND partition = $2 FOR UPDATE`, name, skey).
		Query(func(rows pgx.Rows) error {
			recs, err := scanRecords(rows)
			if err == nil && len(recs) == 1 {
				rec = &recs[0]
			}
			return err
		})
	batch.Queue(`SELECT position, transaction_id, event_type, version, payload, metadata, recorded_at FROM eventstore.events
WHERE aggregate_type = $1 AND aggregate_id = $2 AND position < $3
  AND position > (SELECT position FROM jetproj.partitions WHERE projection = $4 AND partition = $5)
ORDER BY version`, events[0].AggregateType, events[0].AggregateID, events[0].Position, name, skey).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				e := eventstore.Event{AggregateType: events[0].AggregateType, AggregateID: events[0].AggregateID}
				var payload, meta []byte
				if err := rows.Scan(&e.Position, &e.TransactionID, &e.Type, &e.Version, &payload, &meta, &e.RecordedAt); err != nil {
					return err
				}
				e.Payload = payload
				if len(meta) > 2 {
					if err := json.Unmarshal(meta, &e.Metadata); err != nil {
						return fmt.Errorf("event %d metadata: %w", e.Position, err)
					}
				}
				earlier = append(earlier, e)
			}
			return rows.Err()
		})
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return fail(nil, fmt.Errorf("read the partition: %w", err))
	}
	if rec == nil {
		return fail(nil, errors.New("partition record missing after insert"))
	}
	if rec.Parked != nil || rec.Failing != nil {
		stuck := rec.Parked
		if stuck == nil {
			stuck = rec.Failing
		}
		return fail(nil, fmt.Errorf("%w at event %s (position %d): %s", ErrPartitionStopped, stuck.EventType, stuck.Position, stuck.Error))
	}
	state, err := p.def.DecodeState(rec.State)
	if err != nil {
		return fail(nil, err)
	}

	all := make([]eventstore.Event, 0, len(earlier)+len(events))
	all = append(append(all, earlier...), events...)
	metas := make([]projection.Meta, len(all))
	for i, e := range all {
		if metas[i], err = p.meta(key, e); err != nil {
			return fail(nil, fmt.Errorf("event at position %d: %w", e.Position, err))
		}
	}

	qtx := &inlineTx{Tx: tx}
	pc := &projectionspec.PartitionContext{Key: key, Tx: qtx, Queue: qtx, State: state}
	quiet := 0 // emissions of the events caught up on are dropped
	var causes []int
	for i := range metas {
		m := &metas[i]
		pc.Tenant = m.Tenant()
		if err := safeInline(func() error { return p.def.Apply(ctx, pc, *m) }); err != nil {
			return fail(m, err)
		}
		if err := qtx.send(ctx); err != nil {
			return fail(m, err)
		}
		for len(causes) < len(pc.Emitted) {
			causes = append(causes, i)
		}
		if i < len(earlier) {
			quiet = len(pc.Emitted)
		}
	}
	if err := safeInline(func() error { return p.def.Flush(ctx, pc) }); err != nil {
		return fail(nil, fmt.Errorf("flush: %w", err))
	}
	for len(causes) < len(pc.Emitted) {
		causes = append(causes, len(metas)-1)
	}
	emitted, causes := pc.Emitted[quiet:], causes[quiet:]

	data, err := json.Marshal(state)
	if err != nil {
		return fail(nil, fmt.Errorf("%w: %w", ErrStateNotStored, err))
	}
	next := *rec
	next.State, next.Position = data, metas[len(metas)-1].Position
	if err := checkJSONB(next); err != nil {
		return fail(nil, err)
	}

	// One round trip: the flush hook's statements, the derived events and
	// the record.
	final := &pgx.Batch{}
	qtx.drain(final)
	if len(emitted) > 0 {
		gen, live, err := p.emission(ctx)
		if err != nil {
			return fail(nil, err)
		}
		if live {
			ob := &pgBatch{}
			for i, e := range emitted {
				next.Emitted++
				src := metas[causes[i]]
				ob.outbox = append(ob.outbox, OutboxEntry{Projection: name, Partition: key, Subject: EmitSubject(name, key),
					MsgID: msgID(name, gen, key, next.Emitted), Generation: gen, Seq: next.Emitted,
					EventType: e.Type, Payload: e.Payload, Links: emissionLinks(e), LinkOnly: e.LinkOnly,
					SourcePosition: src.Position, TraceParent: src.TraceParent,
					Metadata: emissionMetadata(src, e), CausationID: src.MsgID})
			}
			ob.queueOutbox(final)
		}
	}
	final.Queue(`UPDATE jetproj.partitions SET position = $3, state = $4::jsonb, emitted = $5, revision = revision + 1, updated_at = now()
WHERE projection = $1 AND partition = $2`, name, skey, next.Position, string(next.State), int64(next.Emitted))
	if err := tx.SendBatch(ctx, final).Close(); err != nil {
		return fail(nil, err)
	}
	return nil
}

// meta is what a handler of the runner would see for e, the stream
// sequence aside (0: the event is not in the stream yet).
func (p *InlineProjection) meta(key string, e eventstore.Event) (projection.Meta, error) {
	msg, err := eventmsg.New(p.prefix, e)
	if err != nil {
		return projection.Meta{}, err
	}
	parsed, err := eventmsg.Parse(msg)
	if err != nil {
		return projection.Meta{}, err
	}
	return projection.Meta{Type: e.Type, Subject: msg.Subject, Partition: key, AggregateType: e.AggregateType,
		AggregateID: e.AggregateID, Version: e.Version, Position: e.Position, MsgID: msg.Header.Get(nats.MsgIdHdr),
		RecordedAt: parsed.RecordedAt, Metadata: parsed.Metadata, TraceParent: parsed.TraceParent, Raw: e.Payload}, nil
}

// emission tells the generation derived events carry and whether they are
// written at all.
func (p *InlineProjection) emission(ctx context.Context) (gen int, live bool, err error) {
	if p.reg == nil {
		_, notLive := p.def.Deployment()
		return 0, !notLive, nil
	}
	e, ok := p.reg.cached(p.def.Name())
	if !ok {
		if e, ok, err = p.reg.Get(ctx, p.def.Name()); err != nil {
			return 0, false, fmt.Errorf("registry: %w", err)
		}
	}
	if !ok {
		_, notLive := p.def.Deployment()
		return 0, !notLive, nil
	}
	return e.Generation, !e.NotLive, nil
}

func safeInline(f func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("handler panicked: %v", v)
		}
	}()
	return f()
}

// inlineTx is the appending transaction as handlers see it: statements
// queued with Context.Exec are sent before any statement sent directly,
// so that one sees their effects, and otherwise after each event.
type inlineTx struct {
	pgx.Tx
	queue []queuedStmt
}

func (t *inlineTx) Queue(sql string, args ...any) {
	t.queue = append(t.queue, queuedStmt{sql: sql, args: args})
}

// drain moves the queued statements into b.
func (t *inlineTx) drain(b *pgx.Batch) {
	for _, q := range t.queue {
		b.Queue(q.sql, q.args...)
	}
	t.queue = t.queue[:0]
}

// send sends the queued statements in one round trip.
func (t *inlineTx) send(ctx context.Context) error {
	if len(t.queue) == 0 {
		return nil
	}
	stmts := slices.Clone(t.queue)
	b := &pgx.Batch{}
	t.drain(b)
	br := t.Tx.SendBatch(ctx, b)
	for _, q := range stmts {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return &StatementError{SQL: q.sql, Err: err}
		}
	}
	return br.Close()
}

func (t *inlineTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.send(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.Tx.Exec(ctx, sql, args...)
}

func (t *inlineTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.send(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Query(ctx, sql, args...)
}

func (t *inlineTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := t.send(ctx); err != nil {
		return errRow{err}
	}
	return t.Tx.QueryRow(ctx, sql, args...)
}

func (t *inlineTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if len(t.queue) == 0 {
		return t.Tx.SendBatch(ctx, b)
	}
	stmts := slices.Clone(t.queue)
	nb := &pgx.Batch{}
	t.drain(nb)
	nb.QueuedQueries = append(nb.QueuedQueries, b.QueuedQueries...)
	br := t.Tx.SendBatch(ctx, nb)
	for _, q := range stmts {
		if _, err := br.Exec(); err != nil {
			return &failedBatch{BatchResults: br, err: &StatementError{SQL: q.sql, Err: err}}
		}
	}
	return br
}

func (t *inlineTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.send(ctx); err != nil {
		return 0, err
	}
	return t.Tx.CopyFrom(ctx, table, columns, src)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
