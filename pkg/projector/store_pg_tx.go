package projector

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// lazyTx is the transaction of a batch. It saves round trips, which is what
// live batches of a few events pay for: BEGIN is not sent on its own but
// with the batch's first statement, and neither is a partition's savepoint
// (a partition that writes nothing sends none). Statements handlers queue
// (Context.Exec) wait in queue and travel with the next statement sent
// directly, or with the commit: a batch whose handlers only queue costs
// one round trip for all of its writes.
type lazyTx struct {
	pool *pgxpool.Pool
	// tx is nil until the first statement.
	tx pgx.Tx
	// pending names a savepoint to establish before the next statement.
	pending string
	// queue holds statements not sent yet, in order; a savepoint asked for
	// before a queued statement is queued with it, at spAt (-1: none
	// there).
	queue []queuedStmt
	spAt  int
}

// queuedStmt is a statement waiting in lazyTx.queue.
type queuedStmt struct {
	sql  string
	args []any
}

// mark asks for a savepoint before the next statement.
func (t *lazyTx) mark(name string) { t.pending, t.spAt = name, -1 }

// Queue adds a statement to send with the next round trip.
func (t *lazyTx) Queue(sql string, args ...any) {
	if t.pending != "" {
		t.spAt = len(t.queue)
		t.queue = append(t.queue, queuedStmt{sql: "SAVEPOINT " + t.pending})
		t.pending = ""
	}
	t.queue = append(t.queue, queuedStmt{sql: sql, args: args})
}

// queued reports whether statements wait to be sent.
func (t *lazyTx) queued() bool { return len(t.queue) > 0 }

// rollback undoes the writes since the last mark: nothing to send when no
// statement went to the server since.
func (t *lazyTx) rollback(ctx context.Context, name string) error {
	switch {
	case t.pending != "":
		t.pending = ""
		return nil
	case t.spAt >= 0:
		clear(t.queue[t.spAt:])
		t.queue, t.spAt = t.queue[:t.spAt], -1
		return nil
	case t.tx == nil:
		return nil
	}
	// The savepoint went to the server; what was queued since did not.
	clear(t.queue)
	t.queue = t.queue[:0]
	_, err := t.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+name)
	return err
}

// flush begins the transaction and sends the pending savepoint and the
// queued statements, for the calls that cannot carry them.
func (t *lazyTx) flush(ctx context.Context) error {
	if t.tx != nil && t.pending == "" && len(t.queue) == 0 {
		return nil
	}
	return t.SendBatch(ctx, &pgx.Batch{}).Close()
}

// prefixed returns b with BEGIN, the pending savepoint and the queued
// statements first, as needed, the number of those, and whether a BEGIN
// is among them.
func (t *lazyTx) prefixed(b *pgx.Batch) (*pgx.Batch, int) {
	if t.tx != nil && t.pending == "" && len(t.queue) == 0 {
		return b, 0
	}
	nb := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(b.QueuedQueries)+len(t.queue)+2)}
	if t.tx == nil {
		nb.BeginTx(pgx.TxOptions{})
	}
	for _, q := range t.queue {
		nb.Queue(q.sql, q.args...)
	}
	if t.pending != "" {
		nb.Queue("SAVEPOINT " + t.pending)
	}
	n := len(nb.QueuedQueries)
	nb.QueuedQueries = append(nb.QueuedQueries, b.QueuedQueries...)
	return nb, n
}

// Commit commits what was written; nothing when nothing was.
func (t *lazyTx) Commit(ctx context.Context) error {
	if len(t.queue) > 0 {
		if err := t.flush(ctx); err != nil {
			return err
		}
	}
	if t.tx == nil {
		return nil
	}
	return t.tx.Commit(ctx)
}

// Rollback abandons the transaction, if it began.
func (t *lazyTx) Rollback(ctx context.Context) error {
	clear(t.queue)
	t.queue, t.spAt, t.pending = t.queue[:0], -1, ""
	if t.tx == nil {
		return nil
	}
	return t.tx.Rollback(ctx)
}

func (t *lazyTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if len(args) == 0 {
		// Without arguments pgx uses the simple protocol, which allows
		// several statements in one string; a batch would not.
		if err := t.flush(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
	}
	if t.tx != nil && t.pending == "" {
		return t.tx.Exec(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := t.SendBatch(ctx, b)
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

func (t *lazyTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.tx != nil && t.pending == "" {
		return t.tx.Query(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := t.SendBatch(ctx, b)
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return rows, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

func (t *lazyTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.tx != nil && t.pending == "" {
		return t.tx.QueryRow(ctx, sql, args...)
	}
	rows, err := t.Query(ctx, sql, args...)
	return &firstRow{rows: rows, err: err}
}

func (t *lazyTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	queue, begin := t.queue, t.tx == nil
	nb, n := t.prefixed(b)
	if n == 0 {
		return t.tx.SendBatch(ctx, b)
	}
	var br pgx.BatchResults
	if t.tx == nil {
		br = t.pool.SendBatch(ctx, nb)
		// The transaction is known before the batch is read; if the batch
		// failed before BEGIN, it is closed and says so.
		t.tx = br.Tx()
	} else {
		br = t.tx.SendBatch(ctx, nb)
	}
	// Sent: whatever its outcome, nothing waits any more.
	t.queue, t.spAt, t.pending = nil, -1, ""
	for i := range n {
		if _, err := br.Exec(); err != nil {
			switch q := i; {
			case begin && q == 0:
				err = fmt.Errorf("projector: begin: %w", err)
			default:
				if begin {
					q--
				}
				if q < len(queue) && !strings.HasPrefix(queue[q].sql, "SAVEPOINT ") {
					err = &StatementError{SQL: queue[q].sql, Err: err}
				} else {
					err = fmt.Errorf("projector: savepoint: %w", err)
				}
			}
			return &failedBatch{BatchResults: br, err: err}
		}
	}
	return br
}

func (t *lazyTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.flush(ctx); err != nil {
		return 0, err
	}
	return t.tx.CopyFrom(ctx, table, columns, src)
}

func (t *lazyTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.tx.Prepare(ctx, name, sql)
}

func (t *lazyTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.tx.Begin(ctx)
}

func (t *lazyTx) LargeObjects() pgx.LargeObjects {
	_ = t.flush(context.Background())
	return t.tx.LargeObjects()
}

// Conn is the connection itself: statements sent on it bypass the lazy
// BEGIN and savepoint, so they are sent first.
func (t *lazyTx) Conn() *pgx.Conn {
	_ = t.flush(context.Background())
	return t.tx.Conn()
}

// batchRows are rows read from a batch: closing them closes the batch.
type batchRows struct {
	pgx.Rows
	br     pgx.BatchResults
	closed bool
}

func (r *batchRows) Close() {
	r.Rows.Close()
	if !r.closed {
		r.closed = true
		_ = r.br.Close()
	}
}

func (r *batchRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

// firstRow is QueryRow's result over batchRows.
type firstRow struct {
	rows pgx.Rows
	err  error
}

func (r *firstRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

// failedBatch reports the failure of the savepoint queued before a batch.
type failedBatch struct {
	pgx.BatchResults
	err error
}

func (b *failedBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b *failedBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b *failedBatch) QueryRow() pgx.Row                { return &firstRow{err: b.err} }
func (b *failedBatch) Close() error {
	_ = b.BatchResults.Close()
	return b.err
}
