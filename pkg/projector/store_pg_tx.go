package projector

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// lazyTx is the transaction handlers write with. A partition's savepoint is
// not sent on its own: it travels with the partition's first statement, in
// the same round trip, and a partition that writes nothing never sends one.
// Live batches touch many partitions with an event or two each, so this
// saves a round trip per partition per batch.
type lazyTx struct {
	pgx.Tx
	// pending names a savepoint to establish before the next statement.
	pending string
}

// mark asks for a savepoint before the next statement.
func (t *lazyTx) mark(name string) { t.pending = name }

// rollback undoes the writes since the last mark: nothing to do when no
// statement ran since.
func (t *lazyTx) rollback(ctx context.Context, name string) error {
	if t.pending != "" {
		t.pending = ""
		return nil
	}
	_, err := t.Tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+name)
	return err
}

// flush establishes the pending savepoint in a round trip of its own, for
// the calls that cannot carry it.
func (t *lazyTx) flush(ctx context.Context) error {
	if t.pending == "" {
		return nil
	}
	name := t.pending
	if _, err := t.Tx.Exec(ctx, "SAVEPOINT "+name); err != nil {
		return err
	}
	t.pending = ""
	return nil
}

// withSavepoint returns b with the pending savepoint queued first, and
// whether it was.
func (t *lazyTx) withSavepoint(b *pgx.Batch) (*pgx.Batch, bool) {
	if t.pending == "" {
		return b, false
	}
	nb := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(b.QueuedQueries)+1)}
	nb.Queue("SAVEPOINT " + t.pending)
	nb.QueuedQueries = append(nb.QueuedQueries, b.QueuedQueries...)
	return nb, true
}

func (t *lazyTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if len(args) == 0 {
		// Without arguments pgx uses the simple protocol, which allows
		// several statements in one string; a batch would not.
		if err := t.flush(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
	}
	if t.pending == "" {
		return t.Tx.Exec(ctx, sql, args...)
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
	if t.pending == "" {
		return t.Tx.Query(ctx, sql, args...)
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
	if t.pending == "" {
		return t.Tx.QueryRow(ctx, sql, args...)
	}
	rows, err := t.Query(ctx, sql, args...)
	return &firstRow{rows: rows, err: err}
}

func (t *lazyTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	nb, queued := t.withSavepoint(b)
	br := t.Tx.SendBatch(ctx, nb)
	if !queued {
		return br
	}
	if _, err := br.Exec(); err != nil {
		return &failedBatch{BatchResults: br, err: fmt.Errorf("projector: savepoint: %w", err)}
	}
	t.pending = ""
	return br
}

func (t *lazyTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.flush(ctx); err != nil {
		return 0, err
	}
	return t.Tx.CopyFrom(ctx, table, columns, src)
}

func (t *lazyTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Prepare(ctx, name, sql)
}

func (t *lazyTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Begin(ctx)
}

func (t *lazyTx) LargeObjects() pgx.LargeObjects {
	_ = t.flush(context.Background())
	return t.Tx.LargeObjects()
}

// Conn is the connection itself: statements sent on it bypass the lazy
// savepoint, so it is established first.
func (t *lazyTx) Conn() *pgx.Conn {
	_ = t.flush(context.Background())
	return t.Tx.Conn()
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
