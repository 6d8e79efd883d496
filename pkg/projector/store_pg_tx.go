package projector

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// lazyTx is the transaction of a batch. It saves round trips, which is what
// live batches of a few events pay for: BEGIN is not sent on its own but
// with the batch's first statement, and neither is a partition's savepoint
// (a partition that writes nothing sends none).
type lazyTx struct {
	pool *pgxpool.Pool
	// tx is nil until the first statement.
	tx pgx.Tx
	// pending names a savepoint to establish before the next statement.
	pending string
}

// mark asks for a savepoint before the next statement.
func (t *lazyTx) mark(name string) { t.pending = name }

// rollback undoes the writes since the last mark: nothing to do when no
// statement ran since.
func (t *lazyTx) rollback(ctx context.Context, name string) error {
	if t.pending != "" || t.tx == nil {
		t.pending = ""
		return nil
	}
	_, err := t.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+name)
	return err
}

// flush begins the transaction and establishes the pending savepoint in
// round trips of their own, for the calls that cannot carry them.
func (t *lazyTx) flush(ctx context.Context) error {
	if t.tx == nil {
		tx, err := t.pool.Begin(ctx)
		if err != nil {
			return err
		}
		t.tx = tx
	}
	if t.pending == "" {
		return nil
	}
	if _, err := t.tx.Exec(ctx, "SAVEPOINT "+t.pending); err != nil {
		return err
	}
	t.pending = ""
	return nil
}

// prefixed returns b with BEGIN and the pending savepoint queued first, as
// needed, and how many queries it queued.
func (t *lazyTx) prefixed(b *pgx.Batch) (*pgx.Batch, int) {
	if t.tx != nil && t.pending == "" {
		return b, 0
	}
	nb := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(b.QueuedQueries)+2)}
	n := 0
	if t.tx == nil {
		nb.BeginTx(pgx.TxOptions{})
		n++
	}
	if t.pending != "" {
		nb.Queue("SAVEPOINT " + t.pending)
		n++
	}
	nb.QueuedQueries = append(nb.QueuedQueries, b.QueuedQueries...)
	return nb, n
}

// Commit commits what was written; nothing when nothing was.
func (t *lazyTx) Commit(ctx context.Context) error {
	if t.tx == nil {
		return nil
	}
	return t.tx.Commit(ctx)
}

// Rollback abandons the transaction, if it began.
func (t *lazyTx) Rollback(ctx context.Context) error {
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
	for range n {
		if _, err := br.Exec(); err != nil {
			return &failedBatch{BatchResults: br, err: fmt.Errorf("projector: begin: %w", err)}
		}
	}
	t.pending = ""
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
