package eventstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier runs queries: a *pgxpool.Pool, a *pgx.Conn or a pgx.Tx.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// DB is a Querier that can also begin transactions: a pool or a connection.
type DB interface {
	Querier
	Executor
}

// AppendResult tells where appended events landed.
type AppendResult struct {
	// FirstPosition and LastPosition of the appended events.
	FirstPosition, LastPosition int64
	// Version is the aggregate's version after the append.
	Version int64
}

// Append appends events to one aggregate in one transaction. expected is the
// version the aggregate must be at (ExpectNoStream for a new aggregate,
// ExpectAny to skip the check). When another writer got there first, the
// error is a *VersionConflictError (errors.Is ErrVersionConflict) and nothing
// is stored.
func Append(ctx context.Context, db Executor, aggregateType, aggregateID string, expected int64, events ...NewEvent) (AppendResult, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return AppendResult{}, fmt.Errorf("eventstore: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	res, err := AppendTx(ctx, tx, aggregateType, aggregateID, expected, events...)
	if err != nil {
		return res, err
	}
	if err := tx.Commit(ctx); err != nil {
		return AppendResult{}, fmt.Errorf("eventstore: commit: %w", err)
	}
	return res, nil
}

// AppendTx is Append inside the caller's transaction, so that an application
// can store events together with its own writes. A version conflict may
// surface here or, for ExpectAny racing another writer, at commit.
func AppendTx(ctx context.Context, tx Querier, aggregateType, aggregateID string, expected int64, events ...NewEvent) (AppendResult, error) {
	res, _, err := appendTx(ctx, tx, aggregateType, aggregateID, expected, events, false)
	return res, err
}

// appendTx appends; with stored it also returns the stored events, in
// version order, as a reader of the store would see them.
func appendTx(ctx context.Context, tx Querier, aggregateType, aggregateID string, expected int64, events []NewEvent, stored bool) (AppendResult, []Event, error) {
	if len(events) == 0 {
		return AppendResult{}, nil, fmt.Errorf("%w: no events to append", ErrInvalidEvent)
	}
	if expected < ExpectAny {
		return AppendResult{}, nil, fmt.Errorf("%w: expected version %d", ErrInvalidEvent, expected)
	}
	types := make([]string, len(events))
	payloads := make([]string, len(events))
	metas := make([]string, len(events))
	for i, e := range events {
		if e.Type == "" {
			return AppendResult{}, nil, fmt.Errorf("%w: event %d has no type", ErrInvalidEvent, i)
		}
		p, err := marshalPayload(e.Payload)
		if err != nil {
			return AppendResult{}, nil, fmt.Errorf("%w: event %d (%s) payload: %v", ErrInvalidEvent, i, e.Type, err)
		}
		m := e.Metadata
		if m == nil {
			m = map[string]string{}
		}
		mb, err := json.Marshal(m)
		if err != nil {
			return AppendResult{}, nil, fmt.Errorf("%w: event %d metadata: %v", ErrInvalidEvent, i, err)
		}
		types[i], payloads[i], metas[i] = e.Type, string(p), string(mb)
	}

	var current int64
	if err := tx.QueryRow(ctx,
		`SELECT coalesce(max(version), 0) FROM eventstore.events WHERE aggregate_type = $1 AND aggregate_id = $2`,
		aggregateType, aggregateID).Scan(&current); err != nil {
		return AppendResult{}, nil, fmt.Errorf("eventstore: read version: %w", err)
	}
	if expected != ExpectAny && current != expected {
		return AppendResult{}, nil, &VersionConflictError{aggregateType, aggregateID, expected, current}
	}

	returning := `position, transaction_id, version, recorded_at`
	if stored {
		returning += `, payload, metadata`
	}
	rows, err := tx.Query(ctx, `
INSERT INTO eventstore.events (aggregate_type, aggregate_id, version, event_type, payload, metadata)
SELECT $1, $2, $3 + n, t, p::jsonb, m::jsonb
FROM unnest($4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS e(t, p, m, n)
ORDER BY n
RETURNING `+returning, aggregateType, aggregateID, current, types, payloads, metas)
	if err != nil {
		return AppendResult{}, nil, conflictOr(err, aggregateType, aggregateID, expected, current)
	}
	var res AppendResult
	var out []Event
	if stored {
		out = make([]Event, 0, len(events))
	}
	for rows.Next() {
		e := Event{AggregateType: aggregateType, AggregateID: aggregateID}
		dest := []any{&e.Position, &e.TransactionID, &e.Version, &e.RecordedAt}
		var payload, meta []byte
		if stored {
			dest = append(dest, &payload, &meta)
		}
		if err := rows.Scan(dest...); err != nil {
			rows.Close()
			return AppendResult{}, nil, err
		}
		if stored {
			e.Type, e.Payload = types[e.Version-current-1], payload
			if len(meta) > 2 {
				if err := json.Unmarshal(meta, &e.Metadata); err != nil {
					rows.Close()
					return AppendResult{}, nil, fmt.Errorf("eventstore: event %d metadata: %w", e.Position, err)
				}
			}
			out = append(out, e)
		}
		if res.FirstPosition == 0 || e.Position < res.FirstPosition {
			res.FirstPosition = e.Position
		}
		res.LastPosition = max(res.LastPosition, e.Position)
	}
	if err := rows.Err(); err != nil {
		return AppendResult{}, nil, conflictOr(err, aggregateType, aggregateID, expected, current)
	}
	res.Version = current + int64(len(events))
	slices.SortFunc(out, func(a, b Event) int { return cmp.Compare(a.Version, b.Version) })
	return res, out, nil
}

func conflictOr(err error, aggType, aggID string, expected, current int64) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "events_aggregate_version" {
		return &VersionConflictError{aggType, aggID, expected, current + 1}
	}
	return fmt.Errorf("eventstore: insert: %w", err)
}

func marshalPayload(p any) ([]byte, error) {
	switch v := p.(type) {
	case nil:
		return []byte("{}"), nil
	case json.RawMessage:
		if !json.Valid(v) {
			return nil, errors.New("not valid JSON")
		}
		return v, nil
	case []byte:
		if !json.Valid(v) {
			return nil, errors.New("not valid JSON")
		}
		return v, nil
	default:
		return json.Marshal(v)
	}
}

const selectEvent = `SELECT position, transaction_id, aggregate_type, aggregate_id, version,
       event_type, payload, metadata, recorded_at FROM eventstore.events `

func scanEvents(rows pgx.Rows, out []Event) ([]Event, error) {
	defer rows.Close()
	for rows.Next() {
		var e Event
		var payload, meta []byte
		if err := rows.Scan(&e.Position, &e.TransactionID, &e.AggregateType, &e.AggregateID, &e.Version,
			&e.Type, &payload, &meta, &e.RecordedAt); err != nil {
			return out, err
		}
		e.Payload = payload
		if len(meta) > 0 {
			if err := json.Unmarshal(meta, &e.Metadata); err != nil {
				return out, fmt.Errorf("eventstore: event %d metadata: %w", e.Position, err)
			}
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// ReadFrom reads up to limit events with position > after, in position
// order. It sees only committed rows, so a reader that must not miss rows
// committed late should use ReadCommitted instead.
func ReadFrom(ctx context.Context, db Querier, after int64, limit int) ([]Event, error) {
	rows, err := db.Query(ctx, selectEvent+`WHERE position > $1 ORDER BY position LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("eventstore: read: %w", err)
	}
	return scanEvents(rows, nil)
}

// ReadAggregate reads one aggregate's events with version > afterVersion, in
// version order.
func ReadAggregate(ctx context.Context, db Querier, aggregateType, aggregateID string, afterVersion int64) ([]Event, error) {
	rows, err := db.Query(ctx, selectEvent+`WHERE aggregate_type = $1 AND aggregate_id = $2 AND version > $3 ORDER BY version`,
		aggregateType, aggregateID, afterVersion)
	if err != nil {
		return nil, fmt.Errorf("eventstore: read aggregate: %w", err)
	}
	return scanEvents(rows, nil)
}

// Filter narrows ReadCommitted to some aggregate and event types. Empty
// lists match everything. Event types are matched in SQL with LIKE patterns
// (see GlobToLike).
type Filter struct {
	AggregateTypes []string
	EventTypeLike  []string
}

// ReadCommitted reads up to limit events after cursor c in (transaction id,
// position) order, only from transactions that have finished: rows below the
// snapshot's xmin can no longer change, so reading in this order never skips
// a row that commits late, and a rolled-back row simply never appears.
//
// scanned is the cursor of the last row the query passed over (it may be
// beyond the last returned event when a filter skipped rows), so a filtered
// reader advances through rows it does not want.
func ReadCommitted(ctx context.Context, db Querier, c Cursor, limit int, f Filter) (events []Event, scanned Cursor, err error) {
	scanned = c
	if len(f.AggregateTypes) == 0 && len(f.EventTypeLike) == 0 {
		rows, err := db.Query(ctx, selectEvent+`
WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
  AND (transaction_id, position) > ($1::xid8, $2::bigint)
ORDER BY transaction_id, position
LIMIT $3`, c.TransactionID, c.Position, limit)
		if err != nil {
			return nil, c, fmt.Errorf("eventstore: read committed: %w", err)
		}
		events, err = scanEvents(rows, nil)
		if err != nil {
			return nil, c, fmt.Errorf("eventstore: read committed: %w", err)
		}
		if len(events) > 0 {
			scanned = events[len(events)-1].Cursor()
		}
		return events, scanned, nil
	}
	// Filtered: page over the tail index and mark the wanted rows, so that
	// the scanned cursor advances even when nothing in the page matches.
	rows, err := db.Query(ctx, `
SELECT position, transaction_id, aggregate_type, aggregate_id, version, event_type,
       CASE WHEN wanted THEN payload END, CASE WHEN wanted THEN metadata END, recorded_at, wanted
FROM (
    SELECT *, (cardinality($4::text[]) = 0 OR aggregate_type = ANY($4::text[]))
          AND (cardinality($5::text[]) = 0 OR event_type LIKE ANY($5::text[])) AS wanted
    FROM eventstore.events
    WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
      AND (transaction_id, position) > ($1::xid8, $2::bigint)
    ORDER BY transaction_id, position
    LIMIT $3
) page
ORDER BY transaction_id, position`, c.TransactionID, c.Position, limit, nonNil(f.AggregateTypes), nonNil(f.EventTypeLike))
	if err != nil {
		return nil, c, fmt.Errorf("eventstore: read committed: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			e       Event
			payload []byte
			meta    []byte
			wanted  bool
		)
		if err := rows.Scan(&e.Position, &e.TransactionID, &e.AggregateType, &e.AggregateID, &e.Version,
			&e.Type, &payload, &meta, &e.RecordedAt, &wanted); err != nil {
			return nil, c, fmt.Errorf("eventstore: read committed: %w", err)
		}
		scanned = e.Cursor()
		if !wanted {
			continue
		}
		e.Payload = payload
		if len(meta) > 0 {
			if err := json.Unmarshal(meta, &e.Metadata); err != nil {
				return nil, c, fmt.Errorf("eventstore: event %d metadata: %w", e.Position, err)
			}
		}
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, c, fmt.Errorf("eventstore: read committed: %w", err)
	}
	return events, scanned, nil
}

// GlobToLike turns an event-type glob into a SQL LIKE pattern: "*" matches
// any run of characters, "?" one character; everything else is literal.
// "Ticket.*" becomes "Ticket.%".
func GlobToLike(glob string) string {
	var b strings.Builder
	for _, r := range glob {
		switch r {
		case '*':
			b.WriteByte('%')
		case '?':
			b.WriteByte('_')
		case '%', '_', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Head returns the highest position in the store (0 when empty), committed
// or not yet visible rows aside.
func Head(ctx context.Context, db Querier) (int64, error) {
	var head int64
	if err := db.QueryRow(ctx, `SELECT coalesce(max(position), 0) FROM eventstore.events`).Scan(&head); err != nil {
		return 0, fmt.Errorf("eventstore: head: %w", err)
	}
	return head, nil
}

// behindCount caps the rows Behind counts: past it, Behind estimates.
const behindCount = 100000

// Behind returns how many committed events follow cursor c in the order the
// feeder reads them: 0 once every event up to the store's head is behind c.
// Past 100,000 events it returns an estimate (the head's position minus
// c's), so that a feeder far behind does not count millions of rows.
//
// The head's position minus c's is not the lag: positions are drawn before
// a transaction's id, so concurrent appends commit positions out of cursor
// order, and the cursor's position may stay below the head for good.
func Behind(ctx context.Context, db Querier, c Cursor) (int64, error) {
	var n int64
	err := db.QueryRow(ctx, `SELECT count(*) FROM (SELECT FROM eventstore.events
WHERE (transaction_id, position) > ($1::xid8, $2::bigint) LIMIT $3) s`, c.TransactionID, c.Position, behindCount).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("eventstore: behind: %w", err)
	}
	if n < behindCount {
		return n, nil
	}
	head, err := Head(ctx, db)
	if err != nil {
		return 0, err
	}
	return max(head-c.Position, n), nil
}

// Highest returns the highest position among the events at or before
// cursor c: c's own position, or a higher one that an older transaction
// drew (see Behind). It looks at the 10,000 positions after c's.
func Highest(ctx context.Context, db Querier, c Cursor) (int64, error) {
	var high int64
	err := db.QueryRow(ctx, `SELECT coalesce(max(position), 0) FROM (SELECT transaction_id, position FROM eventstore.events
WHERE position > $2::bigint ORDER BY position LIMIT 10000) s
WHERE (transaction_id, position) <= ($1::xid8, $2::bigint)`, c.TransactionID, c.Position).Scan(&high)
	if err != nil {
		return 0, fmt.Errorf("eventstore: highest: %w", err)
	}
	return max(high, c.Position), nil
}

// Pending reports whether committed rows exist after c that ReadCommitted
// does not return yet because an older transaction is still open.
func Pending(ctx context.Context, db Querier, c Cursor) (bool, error) {
	// ORDER BY … LIMIT 1 keeps even the generic plan an index-only scan;
	// EXISTS (…) lets the planner pick a sequential scan of the table.
	var one int
	err := db.QueryRow(ctx, `SELECT 1 FROM eventstore.events
WHERE (transaction_id, position) > ($1::xid8, $2::bigint)
ORDER BY transaction_id, position LIMIT 1`, c.TransactionID, c.Position).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("eventstore: pending: %w", err)
	}
	return true, nil
}

// PageLimits bounds a page of ReadCommittedPage.
type PageLimits struct {
	// Rows is the most rows the page passes over (returned or skipped by
	// the filter); at least 1.
	Rows int
	// Bytes is the most payload and metadata bytes (their JSON text) the
	// returned events may hold together; 0 means no limit. The first row
	// is always returned, however large, so a single event larger than
	// Bytes comes alone.
	Bytes int64
}

// Page is what ReadCommittedPage read.
type Page struct {
	Events []Event
	// Scanned is the cursor of the last row the page passed over (see
	// ReadCommitted).
	Scanned Cursor
	// Rows counts the rows passed over, returned or skipped by the filter.
	Rows int
	// Bytes is the size of the returned events' payloads and metadata as
	// JSON text (what the client receives).
	Bytes int64
	// Cut is set when the page stopped at the byte limit: committed rows
	// follow it.
	Cut bool
}

// More reports whether rows may follow the page below the horizon: it was
// cut by bytes or passed over as many rows as its limit allowed.
func (p Page) More(l PageLimits) bool { return p.Cut || (p.Rows > 0 && p.Rows >= l.Rows) }

// ReadCommittedPage is ReadCommitted with a byte budget as well as a row
// limit: it returns the longest prefix of the rows ReadCommitted would return
// whose payloads and metadata stay within l.Bytes (at least one row).
//
// Measuring the JSON text of every row in PostgreSQL would cost more than the
// read itself, so the budget is applied twice: PostgreSQL stops sending at
// the row where the stored sizes (pg_column_size, which reads no value)
// reach the budget, and the rows it sends are cut exactly by the bytes
// received; the rest of what was sent is read and dropped, not kept. Stored
// sizes are compressed, so with highly compressible payloads PostgreSQL may
// send more than the budget; the page still holds no more than l.Bytes. A
// caller reading large events keeps l.Rows near the rows a page holds.
func ReadCommittedPage(ctx context.Context, db Querier, c Cursor, l PageLimits, f Filter) (Page, error) {
	p := Page{Scanned: c}
	if l.Rows < 1 {
		return p, fmt.Errorf("eventstore: read committed: page of %d rows", l.Rows)
	}
	budget := l.Bytes
	if budget <= 0 {
		budget = math.MaxInt64
	}
	// page: the rows ReadCommitted would pass over, in order. sized: their
	// stored sizes (0 for rows the filter skips: they are not sent) and
	// the running sum. The outer query keeps the first row and every row
	// whose running sum is within the budget — a prefix, as sizes are not
	// negative — and returns the first row past it without its payload,
	// so that the caller knows the page was cut.
	rows, err := db.Query(ctx, `
SELECT position, transaction_id, aggregate_type, aggregate_id, version, event_type,
       CASE WHEN keep AND wanted THEN payload END, CASE WHEN keep AND wanted THEN metadata END,
       recorded_at, wanted, keep
FROM (
    SELECT *, rn = 1 OR run <= $6 AS keep
    FROM (
        SELECT *, row_number() OVER w AS rn, sum(stored) OVER w AS run
        FROM (
            SELECT position, transaction_id, aggregate_type, aggregate_id, version, event_type, payload, metadata, recorded_at, wanted,
                   CASE WHEN wanted THEN pg_column_size(payload) + pg_column_size(metadata) ELSE 0 END AS stored
            FROM (
                SELECT position, transaction_id, aggregate_type, aggregate_id, version, event_type, payload, metadata, recorded_at,
                       (cardinality($4::text[]) = 0 OR aggregate_type = ANY($4::text[]))
                       AND (cardinality($5::text[]) = 0 OR event_type LIKE ANY($5::text[])) AS wanted
                FROM eventstore.events
                WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                  AND (transaction_id, position) > ($1::xid8, $2::bigint)
                ORDER BY transaction_id, position
                LIMIT $3
            ) page
        ) measured
        WINDOW w AS (ORDER BY transaction_id, position)
    ) sized
    WHERE rn <= 2 OR run - stored <= $6
) kept
ORDER BY transaction_id, position`, c.TransactionID, c.Position, l.Rows, nonNil(f.AggregateTypes), nonNil(f.EventTypeLike), budget)
	if err != nil {
		return Page{Scanned: c}, fmt.Errorf("eventstore: read committed: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			e            Event
			payload      []byte
			meta         []byte
			wanted, keep bool
		)
		if err := rows.Scan(&e.Position, &e.TransactionID, &e.AggregateType, &e.AggregateID, &e.Version,
			&e.Type, &payload, &meta, &e.RecordedAt, &wanted, &keep); err != nil {
			return Page{Scanned: c}, fmt.Errorf("eventstore: read committed: %w", err)
		}
		size := int64(len(payload) + len(meta))
		if !keep || (p.Rows > 0 && p.Bytes+size > budget) {
			// Past the budget: this row and the rest are dropped (Close
			// reads and discards what PostgreSQL still sends).
			p.Cut = true
			break
		}
		p.Scanned = e.Cursor()
		p.Rows++
		if !wanted {
			continue
		}
		e.Payload = payload
		if len(meta) > 0 {
			if err := json.Unmarshal(meta, &e.Metadata); err != nil {
				return Page{Scanned: c}, fmt.Errorf("eventstore: event %d metadata: %w", e.Position, err)
			}
		}
		p.Bytes += size
		p.Events = append(p.Events, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return Page{Scanned: c}, fmt.Errorf("eventstore: read committed: %w", err)
	}
	return p, nil
}
