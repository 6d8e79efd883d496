package emitter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The dead letter, jetproj.outbox_dead (created by the projector's
// migrations, schema version 8), holds the outbox rows of subjects refused
// for good or for longer than EMITTER_DEAD_LETTER_AFTER, with their ids,
// the reason and when they moved. A subject with rows there is dead: its
// later outbox rows follow them (never published before them), until
// Requeue moves them all back to the outbox, in their order.
//
// Moves either way take deadLetterLock, so that a requeue never races a
// follow: rows of a requeued subject are never moved back to the dead
// letter by a follow that began before the requeue.

// deadLetterLock is the transaction-level advisory lock of moves between
// the outbox and the dead letter.
const deadLetterLock = 7305727

// followEvery bounds how often the rows of dead subjects are moved to the
// dead letter, and so how soon a requeue is noticed.
const followEvery = time.Second

// outboxColumns are the columns jetproj.outbox and jetproj.outbox_dead
// share.
const outboxColumns = `id, projection, partition, subject, msg_id, generation, emit_seq, event_type, payload, link_to,
source_seq, source_position, created_at, traceparent, links, link_only, metadata, causation_id`

// reasonFollows is the reason of rows that followed their subject.
const reasonFollows = "follows an earlier dead-lettered event of its subject"

// undefinedTable tells an error of a table that does not exist (a database
// whose schema is older than the dead letter).
func undefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42P01"
}

// loadDead reads the dead subjects once per lease.
func (e *relayer) loadDead(ctx context.Context) error {
	if e.deadLoaded {
		return nil
	}
	rows, err := e.pool.Query(ctx, `SELECT DISTINCT subject FROM jetproj.outbox_dead`)
	if err != nil {
		if undefinedTable(err) {
			e.deadLoaded = true
			return nil
		}
		return fmt.Errorf("emitter: read dead-lettered subjects: %w", err)
	}
	subjs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("emitter: read dead-lettered subjects: %w", err)
	}
	clear(e.dead)
	for _, s := range subjs {
		e.dead[s] = true
	}
	e.deadLoaded, e.followAt = true, time.Time{}
	return nil
}

// inTx runs fn in a transaction holding deadLetterLock.
func inTx(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit: nothing to undo
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, deadLetterLock); err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// deadLetter moves every outbox row of subjs to the dead letter, with
// reasons (one per subject), after deleting the rows already relayed
// (acked): those are on their streams. The subjects are dead from then on.
func (e *relayer) deadLetter(ctx context.Context, subjs, reasons []string) error {
	e.mu.Lock()
	acked := e.acked
	e.mu.Unlock()
	if acked == nil {
		acked = []int64{}
	}
	var moved []string
	err := inTx(ctx, e.pool, func(tx pgx.Tx) error {
		// Planned with its values, so that the ids are hashed (see read).
		if _, err := tx.Exec(ctx, `DELETE FROM jetproj.outbox WHERE id = ANY($1::bigint[])`, pgx.QueryExecModeCacheDescribe, acked); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `WITH r AS (SELECT * FROM unnest($1::text[], $2::text[]) AS r(subject, reason)),
moved AS (DELETE FROM jetproj.outbox o USING r WHERE o.subject = r.subject RETURNING o.*, r.reason)
INSERT INTO jetproj.outbox_dead (`+outboxColumns+`, reason)
SELECT `+outboxColumns+`, reason FROM moved RETURNING subject`, subjs, reasons)
		if err != nil {
			return err
		}
		moved, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		if undefinedTable(err) {
			err = errors.New("no table jetproj.outbox_dead in this database: run a projector of this version on it first (schema version 8)")
		}
		return err
	}
	e.mu.Lock()
	e.acked = nil // deleted
	for i, subj := range subjs {
		delete(e.stalls, subj)
		e.dead[subj] = true
		e.log.Error("derived events moved to the dead letter (jetproj.outbox_dead); the subject's later ones follow until `emitter requeue`",
			"subject", subj, "reason", reasons[i])
	}
	e.mu.Unlock()
	e.deadLettered.Add(float64(len(moved)))
	e.ahead = nil // it may hold rows that moved: read from the start
	e.followAt = time.Now()
	return nil
}

// follow moves the outbox rows of dead subjects to the dead letter, and
// forgets the subjects that have no rows there any more (requeued, or
// removed by hand): their rows are relayed again from then on.
func (e *relayer) follow(ctx context.Context) error {
	subjs := make([]string, 0, len(e.dead))
	for s := range e.dead {
		subjs = append(subjs, s)
	}
	var still []string
	var moved int64
	err := inTx(ctx, e.pool, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `WITH d AS (SELECT DISTINCT subject FROM jetproj.outbox_dead WHERE subject = ANY($1)),
moved AS (DELETE FROM jetproj.outbox o USING d WHERE o.subject = d.subject RETURNING o.*),
ins AS (INSERT INTO jetproj.outbox_dead (`+outboxColumns+`, reason) SELECT `+outboxColumns+`, $2 FROM moved RETURNING 1)
SELECT (SELECT count(*) FROM ins), coalesce((SELECT array_agg(subject) FROM d), '{}')`, subjs, reasonFollows).Scan(&moved, &still)
	})
	if err != nil {
		return fmt.Errorf("emitter: move rows of dead-lettered subjects: %w", err)
	}
	e.followAt = time.Now()
	clear(e.dead)
	for _, s := range still {
		e.dead[s] = true
	}
	if moved > 0 {
		e.deadLettered.Add(float64(moved))
		e.log.Warn("derived events followed their subject into the dead letter", "rows", moved)
	}
	return nil
}

// Requeue moves subject's rows from the dead letter back to the outbox of
// pool's database, with their ids and so in their order before any row
// written since; the emitter relays them as usual within about a second
// (and dead-letters them again if they are refused again). It returns how
// many rows moved.
func Requeue(ctx context.Context, pool *pgxpool.Pool, subject string) (int64, error) {
	var n int64
	err := inTx(ctx, pool, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `WITH back AS (DELETE FROM jetproj.outbox_dead WHERE subject = $1 RETURNING `+outboxColumns+`),
ins AS (INSERT INTO jetproj.outbox (`+outboxColumns+`) SELECT `+outboxColumns+` FROM back RETURNING 1)
SELECT count(*) FROM ins`, subject).Scan(&n)
	})
	if undefinedTable(err) {
		return 0, nil // nothing was ever dead-lettered here
	}
	return n, err
}

// DeadSubject is a subject with rows in the dead letter.
type DeadSubject struct {
	Subject string
	Rows    int64
	Since   time.Time // when its first row moved
	Reason  string    // of its first row
}

// DeadLettered lists the subjects in pool's dead letter, oldest first.
func DeadLettered(ctx context.Context, pool *pgxpool.Pool) ([]DeadSubject, error) {
	rows, err := pool.Query(ctx, `SELECT subject, count(*), min(dead_at), (array_agg(reason ORDER BY id))[1]
FROM jetproj.outbox_dead GROUP BY subject ORDER BY min(dead_at), subject`)
	if err != nil {
		if undefinedTable(err) {
			return nil, nil
		}
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadSubject, error) {
		var d DeadSubject
		err := r.Scan(&d.Subject, &d.Rows, &d.Since, &d.Reason)
		return d, err
	})
}
