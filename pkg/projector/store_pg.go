package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PGStore keeps records in PostgreSQL tables, written in the same
// transaction as the read model: jetproj.partitions and jetproj.slots.
type PGStore struct {
	pool       *pgxpool.Pool
	projection string
}

var _ StateStore = (*PGStore)(nil)

// Capabilities implements CapableStore.
func (s *PGStore) Capabilities() Capabilities { return Capabilities{Transactional: true} }

// NewPGStore returns a store for projection in pool's database.
func NewPGStore(pool *pgxpool.Pool, projection string) *PGStore {
	return &PGStore{pool: pool, projection: projection}
}

const pgSchema = `
CREATE SCHEMA IF NOT EXISTS jetproj;
CREATE TABLE IF NOT EXISTS jetproj.partitions (
    projection text        NOT NULL,
    partition  text        NOT NULL,
    slot       integer     NOT NULL,
    subject    text        NOT NULL DEFAULT '',
    behind     boolean     NOT NULL DEFAULT false,
    failing    jsonb,
    skip       bigint      NOT NULL DEFAULT 0,
    emitted    bigint      NOT NULL DEFAULT 0,
    seq        bigint      NOT NULL,
    position   bigint      NOT NULL DEFAULT 0,
    state      jsonb,
    parked     jsonb,
    revision   bigint      NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, partition)
);
CREATE INDEX IF NOT EXISTS partitions_slot ON jetproj.partitions (projection, slot);
CREATE TABLE IF NOT EXISTS jetproj.outbox (
    id              bigserial   PRIMARY KEY,
    projection      text        NOT NULL,
    partition       text        NOT NULL,
    subject         text        NOT NULL,
    msg_id          text        NOT NULL,
    generation      integer     NOT NULL DEFAULT 0,
    emit_seq        bigint      NOT NULL,
    event_type      text        NOT NULL,
    payload         jsonb       NOT NULL,
    link_to         text        NOT NULL DEFAULT '',
    source_seq      bigint      NOT NULL,
    source_position bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION jetproj.notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jetproj_outbox', '');
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS outbox_notify ON jetproj.outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON jetproj.outbox FOR EACH STATEMENT EXECUTE FUNCTION jetproj.notify_outbox();
ALTER TABLE jetproj.outbox ADD COLUMN IF NOT EXISTS traceparent text NOT NULL DEFAULT '';
ALTER TABLE jetproj.partitions ADD COLUMN IF NOT EXISTS replay bigint NOT NULL DEFAULT 0;
ALTER TABLE jetproj.outbox ADD COLUMN IF NOT EXISTS links text NOT NULL DEFAULT '';
ALTER TABLE jetproj.outbox ADD COLUMN IF NOT EXISTS link_only boolean NOT NULL DEFAULT false;
ALTER TABLE jetproj.outbox ADD COLUMN IF NOT EXISTS metadata text NOT NULL DEFAULT '';
ALTER TABLE jetproj.outbox ADD COLUMN IF NOT EXISTS causation_id text NOT NULL DEFAULT '';
-- Every batch rewrites its partitions' rows: room on their pages lets the
-- new versions stay there (HOT updates, no index writes).
ALTER TABLE jetproj.partitions SET (fillfactor = 50);
-- The tenant a record belongs to when it is not the database's own
-- (PostgresPerTenant: a partition whose events name a tenant without a
-- database is recorded in the first tenant's).
ALTER TABLE jetproj.partitions ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT '';
-- The emitter's dead letter: outbox rows of subjects JetStream refused for
-- good or for too long (EMITTER_DEAD_LETTER_AFTER), with their outbox ids,
-- until emitter requeue moves them back (docs/operations.md).
CREATE TABLE IF NOT EXISTS jetproj.outbox_dead (
    id              bigint      PRIMARY KEY,
    projection      text        NOT NULL,
    partition       text        NOT NULL,
    subject         text        NOT NULL,
    msg_id          text        NOT NULL,
    generation      integer     NOT NULL DEFAULT 0,
    emit_seq        bigint      NOT NULL,
    event_type      text        NOT NULL,
    payload         jsonb       NOT NULL,
    link_to         text        NOT NULL DEFAULT '',
    source_seq      bigint      NOT NULL,
    source_position bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    traceparent     text        NOT NULL DEFAULT '',
    links           text        NOT NULL DEFAULT '',
    link_only       boolean     NOT NULL DEFAULT false,
    metadata        text        NOT NULL DEFAULT '',
    causation_id    text        NOT NULL DEFAULT '',
    reason          text        NOT NULL,
    dead_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS outbox_dead_subject ON jetproj.outbox_dead (subject, id);
CREATE TABLE IF NOT EXISTS jetproj.slots (
    projection text    NOT NULL,
    slot       integer NOT NULL,
    token      bigint  NOT NULL DEFAULT 0,
    watermark  bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (projection, slot)
);`

// pgSchemaVersion changes whenever pgSchema does. 6: the outbox's links,
// link_only, metadata and causation_id (rows written before keep link_to
// and have no metadata; see derived.OutboxLinks). 7: jetproj.partitions' fillfactor.
// 8: the emitter's dead letter, jetproj.outbox_dead. 9: jetproj.partitions'
// tenant.
const pgSchemaVersion = 9

// Init creates the tables (idempotent). When the schema is current it runs
// no DDL at all, so starting a projection never takes locks that running
// batches hold; an upgrade runs under an advisory lock and is retried on a
// deadlock.
func (s *PGStore) Init(ctx context.Context) error {
	var v int
	err := s.pool.QueryRow(ctx, `SELECT coalesce((SELECT version FROM jetproj.schema_version), 0)`).Scan(&v)
	if err == nil && v >= pgSchemaVersion {
		return nil
	}
	for attempt := 0; ; attempt++ {
		err := s.migrate(ctx)
		var pgErr *pgconn.PgError
		if err != nil && attempt < 5 && errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "23505") {
			continue
		}
		if err != nil {
			return fmt.Errorf("projector: create jetproj tables: %w", err)
		}
		return nil
	}
}

func (s *PGStore) migrate(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7305726)`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, pgSchema); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS jetproj.schema_version (version integer NOT NULL);
DELETE FROM jetproj.schema_version;
INSERT INTO jetproj.schema_version VALUES (`+fmt.Sprint(pgSchemaVersion)+`)`); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// LoadSlot reads the slot's records.
func (s *PGStore) LoadSlot(ctx context.Context, slot int) ([]Record, uint64, error) {
	var wm int64
	err := s.pool.QueryRow(ctx, `SELECT watermark FROM jetproj.slots WHERE projection = $1 AND slot = $2`, s.projection, slot).Scan(&wm)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, 0, err
	}
	rows, err := s.pool.Query(ctx, `SELECT partition, subject, behind, failing, skip, emitted, replay, seq, position, state, parked, revision, updated_at, tenant
FROM jetproj.partitions WHERE projection = $1 AND slot = $2`, s.projection, slot)
	if err != nil {
		return nil, 0, err
	}
	recs, err := scanRecords(rows)
	return recs, uint64(wm), err
}

func scanRecords(rows pgx.Rows) ([]Record, error) {
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var r Record
		var seq, rev, skip, emitted, replay int64
		var state, parked, failing []byte
		if err := rows.Scan(&r.Key, &r.Subject, &r.Behind, &failing, &skip, &emitted, &replay, &seq, &r.Position, &state, &parked, &rev, &r.Updated, &r.Tenant); err != nil {
			return nil, err
		}
		loadedRecord(&r)
		r.Seq, r.Revision, r.Skip, r.Emitted, r.Replay = uint64(seq), uint64(rev), uint64(skip), uint64(emitted), uint64(replay)
		if len(state) > 0 {
			r.State = state
		}
		if len(parked) > 0 {
			r.Parked = new(Parked)
			if err := json.Unmarshal(parked, r.Parked); err != nil {
				return nil, err
			}
		}
		if len(failing) > 0 {
			r.Failing = new(Parked)
			if err := json.Unmarshal(failing, r.Failing); err != nil {
				return nil, err
			}
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Get reads one record.
func (s *PGStore) Get(ctx context.Context, _ int, key string) (*Record, error) {
	rows, err := s.pool.Query(ctx, `SELECT partition, subject, behind, failing, skip, emitted, replay, seq, position, state, parked, revision, updated_at, tenant
FROM jetproj.partitions WHERE projection = $1 AND partition = $2`, s.projection, storedString(key))
	if err != nil {
		return nil, err
	}
	recs, err := scanRecords(rows)
	if err != nil || len(recs) == 0 {
		return nil, err
	}
	return &recs[0], nil
}

// Fence raises the slot's token; it waits for a batch of the previous owner
// in flight (which holds the row FOR SHARE) to finish.
func (s *PGStore) Fence(ctx context.Context, slot int, token uint64) error {
	var cur int64
	err := s.pool.QueryRow(ctx, `
INSERT INTO jetproj.slots (projection, slot, token) VALUES ($1, $2, $3)
ON CONFLICT (projection, slot) DO UPDATE SET token = greatest(jetproj.slots.token, excluded.token)
RETURNING token`, s.projection, slot, int64(token)).Scan(&cur)
	if err != nil {
		return fmt.Errorf("projector: fence slot %d: %w", slot, err)
	}
	if uint64(cur) > token {
		return &FencedError{Slots: []int{slot}}
	}
	return nil
}

// Reset deletes the projection's records and watermarks (not its tokens).
func (s *PGStore) Reset(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM jetproj.partitions WHERE projection = $1;`, s.projection)
	if err == nil {
		_, err = s.pool.Exec(ctx, `UPDATE jetproj.slots SET watermark = 0 WHERE projection = $1`, s.projection)
	}
	return err
}

// Delete removes everything of the projection, its outbox included.
func (s *PGStore) Delete(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM jetproj.partitions WHERE projection = $1`, s.projection)
	if err == nil {
		_, err = s.pool.Exec(ctx, `DELETE FROM jetproj.outbox WHERE projection = $1`, s.projection)
	}
	if err == nil {
		_, err = s.pool.Exec(ctx, `DELETE FROM jetproj.slots WHERE projection = $1`, s.projection)
	}
	return err
}

// Summary lists parked records and counts partitions.
func (s *PGStore) Summary(ctx context.Context) ([]Record, int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.partitions WHERE projection = $1`, s.projection).Scan(&n); err != nil {
		return nil, 0, err
	}
	rows, err := s.pool.Query(ctx, `SELECT partition, subject, behind, failing, skip, emitted, replay, seq, position, state, parked, revision, updated_at, tenant
FROM jetproj.partitions WHERE projection = $1 AND parked IS NOT NULL ORDER BY partition`, s.projection)
	if err != nil {
		return nil, 0, err
	}
	recs, err := scanRecords(rows)
	return recs, n, err
}

type pgBatch struct {
	s      *PGStore
	lazy   *lazyTx
	sp     int
	puts   []kvPut
	marks  map[int]uint64
	tokens map[int]uint64
	// outbox holds the batch's derived events until prepare writes them
	// with the positions, in the same round trip; spOutbox is its length
	// at the last savepoint.
	outbox   []OutboxEntry
	spOutbox int
}

// Begin starts a batch. Its transaction begins with its first statement.
func (s *PGStore) Begin(context.Context) (Batch, error) {
	return &pgBatch{s: s, lazy: newLazyTx(s.pool), marks: map[int]uint64{}, tokens: map[int]uint64{}}, nil
}

// Tx is the transaction handlers write with: savepoints travel with the
// first statement after them.
func (b *pgBatch) Tx() pgx.Tx { return b.lazy }

var _ RecordChecker = (*PGStore)(nil)

// CheckRecord refuses a state that jsonb refuses: one holding NUL (\u0000).
func (s *PGStore) CheckRecord(r Record) error { return checkJSONB(r) }

func checkJSONB(r Record) error {
	if nulEscape(r.State) >= 0 {
		return fmt.Errorf("%w: it holds a NUL character (\\u0000), which PostgreSQL jsonb refuses", ErrStateNotStored)
	}
	return nil
}

// Queue queues a handler's statement (projection.Context.Exec).
func (b *pgBatch) Queue(sql string, args ...any) { b.lazy.Queue(sql, args...) }

// SendQueued sends the statements queued since the last Savepoint now: a
// refused one is a *StatementError, and RollbackToSavepoint undoes the
// partition's writes.
func (b *pgBatch) SendQueued(ctx context.Context) error {
	if !b.lazy.queued() {
		return nil
	}
	return b.lazy.flush(ctx)
}

func (b *pgBatch) Savepoint(ctx context.Context) error {
	b.sp++
	b.spOutbox = len(b.outbox)
	b.lazy.mark(fmt.Sprintf("p%d", b.sp))
	return nil
}

func (b *pgBatch) RollbackToSavepoint(ctx context.Context) error {
	b.outbox = b.outbox[:b.spOutbox]
	return b.lazy.rollback(ctx, fmt.Sprintf("p%d", b.sp))
}

func (b *pgBatch) Put(slot int, token uint64, r Record) {
	b.puts = append(b.puts, kvPut{slot, r})
	b.tokens[slot] = token
}

func (b *pgBatch) Watermark(slot int, token uint64, seq uint64) {
	b.marks[slot] = seq
	b.tokens[slot] = token
}

func (b *pgBatch) Rollback(ctx context.Context) { _ = b.lazy.Rollback(ctx) }

var _ OutboxBatch = (*pgBatch)(nil)

// Emit adds derived events to the batch: prepare inserts them into
// jetproj.outbox in the batch's transaction, in the round trip that writes
// the positions. A rollback to the partition's savepoint drops them.
func (b *pgBatch) Emit(_ context.Context, entries []OutboxEntry) error {
	b.outbox = append(b.outbox, entries...)
	return nil
}

// queueOutbox queues the insert of the batch's derived events, in their
// order (the emitter relays by id).
func (b *pgBatch) queueOutbox(batch *pgx.Batch) {
	n := len(b.outbox)
	if n == 0 {
		return
	}
	var (
		proj, part, subj, ids, types, payloads, links = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		traces, metas, causes                         = make([]string, n), make([]string, n), make([]string, n)
		only                                          = make([]bool, n)
		gens                                          = make([]int32, n)
		seqs, sseqs, spos                             = make([]int64, n), make([]int64, n), make([]int64, n)
	)
	for i, e := range b.outbox {
		proj[i], part[i], subj[i], ids[i], types[i], payloads[i] = e.Projection, storedString(e.Partition), e.Subject, e.MsgID, e.EventType, string(e.Payload)
		gens[i], seqs[i], sseqs[i], spos[i] = int32(e.Generation), int64(e.Seq), int64(e.SourceSeq), e.SourcePosition
		traces[i], only[i], causes[i] = e.TraceParent, e.LinkOnly, e.CausationID
		// JSON in text columns: a metadata value may hold what jsonb
		// refuses (NUL).
		if l := e.links(); len(l) > 0 {
			j, _ := json.Marshal(l)
			links[i] = string(j)
		}
		if len(e.Metadata) > 0 {
			j, _ := json.Marshal(e.Metadata)
			metas[i] = string(j)
		}
	}
	batch.Queue(`INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, generation, emit_seq, event_type, payload, links, source_seq, source_position, traceparent,
    link_only, metadata, causation_id)
SELECT p, pa, s, m, g, q, t, y::jsonb, l, ss, sp, tp, lo, md, ca
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::text[],
            $13::bool[], $14::text[], $15::text[])
     WITH ORDINALITY AS o(p, pa, s, m, g, q, t, y, l, ss, sp, tp, lo, md, ca, n)
ORDER BY n`, proj, part, subj, ids, gens, seqs, types, payloads, links, sseqs, spos, traces, only, metas, causes)
}

// Commit checks the fence tokens, writes the records with compare-and-set on
// their revision, and commits the transaction.
func (b *pgBatch) Commit(ctx context.Context) (map[string]uint64, error) {
	defer b.lazy.Rollback(ctx) //nolint:errcheck
	revs, err := b.prepare(ctx)
	if err != nil {
		return nil, err
	}
	if err := b.lazy.Commit(ctx); err != nil {
		return nil, fmt.Errorf("projector: commit: %w", err)
	}
	return revs, nil
}

// prepare checks the fence tokens (holding the slots' rows FOR SHARE until
// the transaction ends, so no new owner can fence in between) and writes
// the records; the caller commits.
func (b *pgBatch) prepare(ctx context.Context) (map[string]uint64, error) {
	// No partition rolls back from here on: the queued statements go
	// without a savepoint.
	b.lazy.unmark()
	slots := make([]int32, 0, len(b.tokens))
	for s := range b.tokens {
		slots = append(slots, int32(s))
	}
	// One round trip: the fence check first (holding the slots' rows FOR
	// SHARE), then the derived events, positions and watermarks. When a
	// token differs the caller rolls everything back.
	batch := &pgx.Batch{}
	have := map[int]uint64{}
	batch.Queue(`SELECT slot, token FROM jetproj.slots WHERE projection = $1 AND slot = ANY($2) FOR SHARE`, b.s.projection, slots).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var slot int32
				var tok int64
				if err := rows.Scan(&slot, &tok); err != nil {
					return err
				}
				have[int(slot)] = uint64(tok)
			}
			return rows.Err()
		})
	b.queueOutbox(batch)
	var fenced []int
	revs := make(map[string]uint64, len(b.puts))
	now := time.Now().UTC()
	// Two statements for all the records, whatever their number: one
	// inserts the new ones, one updates the others with compare-and-set on
	// their revision; each returns the partitions it wrote, and a record
	// missing there was written meanwhile by another owner.
	ins, upd := newPGRows(len(b.puts)), newPGRows(len(b.puts))
	slotOf := make(map[string]int, len(b.puts))
	last := make(map[string]int, len(b.puts)) // a key put twice: the last wins
	for i, p := range b.puts {
		last[p.rec.Key] = i
	}
	for i, p := range b.puts {
		if last[p.rec.Key] != i {
			continue
		}
		skey := storedString(p.rec.Key)
		slotOf[skey] = p.slot
		if p.rec.Revision == 0 {
			ins.add(skey, p.slot, p.rec)
			revs[p.rec.Key] = 1
		} else {
			upd.add(skey, p.slot, p.rec)
			revs[p.rec.Key] = p.rec.Revision + 1
		}
	}
	written := func(rows pgx.Rows) error {
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				return err
			}
			delete(slotOf, k)
		}
		return rows.Err()
	}
	if len(ins.keys) > 0 {
		batch.Queue(`INSERT INTO jetproj.partitions (projection, partition, slot, seq, position, state, parked, revision, updated_at, subject, behind, failing, skip, emitted, replay, tenant)
SELECT $1, k, sl, sq, po, st::jsonb, pk::jsonb, 1, $2, su, be, fa::jsonb, sk, em, re, tn
FROM unnest($3::text[], $4::int[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bool[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], $15::text[])
     AS u(k, sl, sq, po, st, pk, su, be, fa, sk, em, re, tn)
ON CONFLICT DO NOTHING RETURNING partition`, b.s.projection, now, ins.keys, ins.slots, ins.seqs, ins.positions, ins.states, ins.parked,
			ins.subjects, ins.behind, ins.failing, ins.skips, ins.emitted, ins.replays, ins.tenants).Query(written)
	}
	if len(upd.keys) > 0 {
		batch.Queue(`UPDATE jetproj.partitions p SET seq = u.sq, position = u.po, state = u.st::jsonb, parked = u.pk::jsonb, revision = p.revision + 1,
    updated_at = $2, subject = u.su, behind = u.be, failing = u.fa::jsonb, skip = u.sk, emitted = u.em, replay = u.re, tenant = u.tn
FROM unnest($3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bool[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], $15::text[])
     AS u(k, rv, sq, po, st, pk, su, be, fa, sk, em, re, tn)
WHERE p.projection = $1 AND p.partition = u.k AND p.revision = u.rv
RETURNING p.partition`, b.s.projection, now, upd.keys, upd.revs, upd.seqs, upd.positions, upd.states, upd.parked,
			upd.subjects, upd.behind, upd.failing, upd.skips, upd.emitted, upd.replays, upd.tenants).Query(written)
	}
	if len(b.marks) > 0 {
		slots, marks := make([]int32, 0, len(b.marks)), make([]int64, 0, len(b.marks))
		for slot, seq := range b.marks {
			slots, marks = append(slots, int32(slot)), append(marks, int64(seq))
		}
		batch.Queue(`UPDATE jetproj.slots s SET watermark = greatest(s.watermark, u.wm)
FROM unnest($2::int[], $3::bigint[]) AS u(slot, wm) WHERE s.projection = $1 AND s.slot = u.slot`, b.s.projection, slots, marks)
	}
	if err := b.lazy.SendBatch(ctx, batch).Close(); err != nil {
		return nil, fmt.Errorf("projector: write positions: %w", err)
	}
	for _, slot := range slotOf {
		fenced = append(fenced, slot) // its record was not written
	}
	for s, tok := range b.tokens {
		if have[s] != tok {
			fenced = append(fenced, s)
		}
	}
	if len(fenced) > 0 {
		return nil, &FencedError{Slots: fenced}
	}
	return revs, nil
}

// Watermark reads one slot's watermark.
func (s *PGStore) Watermark(ctx context.Context, slot int) (uint64, error) {
	var wm int64
	err := s.pool.QueryRow(ctx, `SELECT watermark FROM jetproj.slots WHERE projection = $1 AND slot = $2`, s.projection, slot).Scan(&wm)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return uint64(wm), err
}

// jsonbSafe is JSON that jsonb takes: an escaped NUL (which jsonb refuses)
// becomes U+FFFD. For failure records, whose error texts may quote keys.
func jsonbSafe(b []byte, _ error) []byte {
	if i := nulEscape(b); i < 0 {
		return b
	}
	out := make([]byte, 0, len(b))
	for {
		i := nulEscape(b)
		if i < 0 {
			return append(out, b...)
		}
		out = append(append(out, b[:i]...), `\ufffd`...)
		b = b[i+6:]
	}
}

// nulEscape returns the index of the first \u0000 escape in the JSON b (a
// backslash that is not itself escaped), or -1.
func nulEscape(b []byte) int {
	for i := 0; i+6 <= len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		if string(b[i:i+6]) == `\u0000` {
			return i
		}
		i++ // skip the escaped character
	}
	return -1
}

// pgRows are records as the columns of a bulk write.
type pgRows struct {
	keys, subjects, tenants                        []string
	slots                                          []int32
	revs, seqs, positions, skips, emitted, replays []int64
	states, parked, failing                        []*string
	behind                                         []bool
}

func newPGRows(n int) *pgRows {
	return &pgRows{keys: make([]string, 0, n)}
}

func (r *pgRows) add(key string, slot int, rec Record) {
	r.keys = append(r.keys, key)
	r.subjects = append(r.subjects, storedString(rec.Subject))
	r.tenants = append(r.tenants, storedString(rec.Tenant))
	r.slots = append(r.slots, int32(slot))
	r.revs = append(r.revs, int64(rec.Revision))
	r.seqs = append(r.seqs, int64(rec.Seq))
	r.positions = append(r.positions, rec.Position)
	r.skips = append(r.skips, int64(rec.Skip))
	r.emitted = append(r.emitted, int64(rec.Emitted))
	r.replays = append(r.replays, int64(rec.Replay))
	r.behind = append(r.behind, rec.Behind)
	var state, parked, failing *string
	if len(rec.State) > 0 {
		st := string(rec.State)
		state = &st
	}
	if rec.Parked != nil {
		pk := string(jsonbSafe(json.Marshal(rec.Parked)))
		parked = &pk
	}
	if rec.Failing != nil {
		fa := string(jsonbSafe(json.Marshal(rec.Failing)))
		failing = &fa
	}
	r.states, r.parked, r.failing = append(r.states, state), append(r.parked, parked), append(r.failing, failing)
}
