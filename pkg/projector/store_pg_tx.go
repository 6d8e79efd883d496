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
// with the batch's first statement, neither is a partition's savepoint (a
// partition that writes nothing sends none), and COMMIT travels with the
// batch's last statements (see pgBatch.prepare). It holds a pooled
// connection and sends BEGIN and COMMIT itself, since a pgx.Tx would spend
// a round trip of its own on its commit.
type lazyTx struct {
	pool *pgxpool.Pool
	// conn is nil until the first statement, and again once the
	// transaction has ended.
	conn *pgxpool.Conn
	// pending names a savepoint to establish before the next statement.
	pending string
	// nested counts the savepoints of Begin.
	nested int
	// lo is the handle large objects are reached through.
	lo *pgx.LargeObjects
}

var _ pgx.Tx = (*lazyTx)(nil)

// mark asks for a savepoint before the next statement.
func (t *lazyTx) mark(name string) { t.pending = name }

// rollback undoes the writes since the last mark: nothing to do when no
// statement ran since.
func (t *lazyTx) rollback(ctx context.Context, name string) error {
	if t.pending != "" || t.conn == nil {
		t.pending = ""
		return nil
	}
	_, err := t.conn.Exec(ctx, "ROLLBACK TO SAVEPOINT "+name)
	return err
}

// flush begins the transaction and establishes the pending savepoint in a
// round trip of their own, for the calls that cannot carry them.
func (t *lazyTx) flush(ctx context.Context) error {
	sql := ""
	if t.conn == nil {
		c, err := t.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		t.conn = c
		sql = "BEGIN"
	}
	if t.pending != "" {
		if sql != "" {
			sql += "; "
		}
		sql += "SAVEPOINT " + t.pending
	}
	if sql == "" {
		return nil
	}
	// No arguments: the simple protocol, both statements in one message.
	if _, err := t.conn.Exec(ctx, sql); err != nil {
		return err
	}
	t.pending = ""
	return nil
}

// prefixed returns b with BEGIN and the pending savepoint queued first, as
// needed, and how many queries it queued. It acquires the connection.
func (t *lazyTx) prefixed(ctx context.Context, b *pgx.Batch) (*pgx.Batch, int, error) {
	if t.conn != nil && t.pending == "" {
		return b, 0, nil
	}
	nb := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(b.QueuedQueries)+2)}
	if t.conn == nil {
		c, err := t.pool.Acquire(ctx)
		if err != nil {
			return nil, 0, err
		}
		t.conn = c
		nb.Queue("BEGIN")
	}
	if t.pending != "" {
		nb.Queue("SAVEPOINT " + t.pending)
	}
	n := len(nb.QueuedQueries)
	nb.QueuedQueries = append(nb.QueuedQueries, b.QueuedQueries...)
	return nb, n, nil
}

// ended gives the connection back after a COMMIT sent in a batch.
func (t *lazyTx) ended() {
	if t.conn != nil {
		t.conn.Release()
		t.conn, t.lo = nil, nil
	}
}

// Commit commits what was written; nothing when nothing was.
func (t *lazyTx) Commit(ctx context.Context) error {
	if t.conn == nil {
		return nil
	}
	tag, err := t.conn.Exec(ctx, "COMMIT")
	if err == nil && tag.String() == "ROLLBACK" {
		err = pgx.ErrTxCommitRollback
	}
	if err != nil {
		_ = t.Rollback(ctx)
		return err
	}
	t.ended()
	return nil
}

// Rollback abandons the transaction, if it began.
func (t *lazyTx) Rollback(ctx context.Context) error {
	if t.conn == nil {
		return nil
	}
	var err error
	if t.conn.Conn().PgConn().TxStatus() != 'I' {
		// A connection left in a transaction is closed on release.
		_, err = t.conn.Exec(ctx, "ROLLBACK")
	}
	t.ended()
	return err
}

func (t *lazyTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if len(args) == 0 {
		// Without arguments pgx uses the simple protocol, which allows
		// several statements in one string; a batch would not.
		if err := t.flush(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
	}
	if t.conn != nil && t.pending == "" {
		return t.conn.Exec(ctx, sql, args...)
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
	if t.conn != nil && t.pending == "" {
		return t.conn.Query(ctx, sql, args...)
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
	if t.conn != nil && t.pending == "" {
		return t.conn.QueryRow(ctx, sql, args...)
	}
	rows, err := t.Query(ctx, sql, args...)
	return &firstRow{rows: rows, err: err}
}

func (t *lazyTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	nb, n, err := t.prefixed(ctx, b)
	if err != nil {
		return &failedBatch{err: fmt.Errorf("projector: begin: %w", err)}
	}
	br := t.conn.SendBatch(ctx, nb)
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
	return t.conn.CopyFrom(ctx, table, columns, src)
}

func (t *lazyTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.flush(ctx); err != nil {
		return nil, err
	}
	return t.conn.Conn().Prepare(ctx, name, sql)
}

// Begin starts a nested transaction: a savepoint.
func (t *lazyTx) Begin(ctx context.Context) (pgx.Tx, error) {
	t.nested++
	n := &nestedTx{lazyTx: t, name: fmt.Sprintf("jetproj_nested_%d", t.nested)}
	if _, err := t.Exec(ctx, "SAVEPOINT "+n.name); err != nil {
		return nil, err
	}
	return n, nil
}

// LargeObjects reaches large objects through a pgx transaction handle on
// the batch's connection (opened with a no-op, never committed: the batch
// ends the transaction).
func (t *lazyTx) LargeObjects() pgx.LargeObjects {
	ctx := context.Background()
	if t.lo == nil {
		if err := t.flush(ctx); err == nil {
			if h, err := t.conn.Conn().BeginTx(ctx, pgx.TxOptions{BeginQuery: "SELECT 1"}); err == nil {
				lo := h.LargeObjects()
				t.lo = &lo
			}
		}
	}
	if t.lo == nil {
		return pgx.LargeObjects{}
	}
	return *t.lo
}

// Conn is the connection itself: statements sent on it bypass the lazy
// BEGIN and savepoint, so they are sent first.
func (t *lazyTx) Conn() *pgx.Conn {
	if err := t.flush(context.Background()); err != nil {
		return nil
	}
	return t.conn.Conn()
}

// nestedTx is a savepoint begun by a handler (Tx.Begin).
type nestedTx struct {
	*lazyTx
	name   string
	closed bool
}

func (n *nestedTx) Commit(ctx context.Context) error {
	if n.closed {
		return pgx.ErrTxClosed
	}
	n.closed = true
	_, err := n.lazyTx.Exec(ctx, "RELEASE SAVEPOINT "+n.name)
	return err
}

func (n *nestedTx) Rollback(ctx context.Context) error {
	if n.closed {
		return pgx.ErrTxClosed
	}
	n.closed = true
	_, err := n.lazyTx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+n.name+"; RELEASE SAVEPOINT "+n.name)
	return err
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
	if b.BatchResults != nil {
		_ = b.BatchResults.Close()
	}
	return b.err
}
