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
// with the batch's first statement. Statements handlers queue
// (Context.Exec) wait in queue and travel with the next statement sent
// directly, or with the commit: a batch whose handlers only queue costs
// one round trip for all of its writes.
//
// A partition's savepoint is established only when it is needed: when a
// statement goes to the server while the partition is being applied. A
// partition that only queues rolls back by dropping its queued statements,
// and the commit sends every queued statement without savepoints — a
// statement refused there fails the whole batch, which the runner then
// replays partition by partition to find it (commitBatch). Savepoints are
// not free: each is a subtransaction, and thousands of nested ones make
// every visibility check of the transaction walk them (PostgreSQL's
// TransactionIdIsCurrentTransactionId took 60 % of the backend's time in
// catch-up batches that set one per partition).
type lazyTx struct {
	pool *pgxpool.Pool
	// tx is nil until the first statement.
	tx pgx.Tx
	// pending names the savepoint of the partition being applied while it
	// is not on the server yet.
	pending string
	// onServer names the savepoint established on the server and not
	// released yet; the next partition releases it (mark), so that
	// savepoints never nest deeper than one.
	onServer string
	// queue holds statements not sent yet, in order; while pending is set,
	// those of the partition being applied start at spAt (-1: it queued
	// none).
	queue []queuedStmt
	spAt  int
}

// queuedStmt is a statement waiting in lazyTx.queue.
// newLazyTx is a batch's transaction on pool, nothing sent yet.
func newLazyTx(pool *pgxpool.Pool) *lazyTx { return &lazyTx{pool: pool, spAt: -1} }

type queuedStmt struct {
	sql  string
	args []any
}

// mark starts a partition: its savepoint is name, established on the server
// before the next statement sent directly.
func (t *lazyTx) mark(name string) {
	if t.onServer != "" {
		// The previous partition is through: its savepoint goes, with the
		// next round trip, before this partition's statements.
		t.queue = append(t.queue, queuedStmt{sql: "RELEASE SAVEPOINT " + t.onServer})
		t.onServer = ""
	}
	t.pending, t.spAt = name, -1
}

// unmark drops the pending savepoint: no partition will roll back any more
// (the batch is about to commit).
func (t *lazyTx) unmark() { t.pending, t.spAt = "", -1 }

// Queue adds a statement to send with the next round trip.
func (t *lazyTx) Queue(sql string, args ...any) {
	if t.pending != "" && t.spAt < 0 {
		t.spAt = len(t.queue)
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
		if t.spAt >= 0 {
			clear(t.queue[t.spAt:])
			t.queue = t.queue[:t.spAt]
		}
		t.unmark()
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

// prefixed returns b with BEGIN, the queued statements and the pending
// savepoint (before the statements of the partition that asked for it)
// first, as needed, and what each of those prefixed statements is: a
// queued statement's SQL, or "" for BEGIN and the savepoint.
func (t *lazyTx) prefixed(b *pgx.Batch) (*pgx.Batch, []string) {
	if t.tx != nil && t.pending == "" && len(t.queue) == 0 {
		return b, nil
	}
	nb := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(b.QueuedQueries)+len(t.queue)+2)}
	what := make([]string, 0, len(t.queue)+2)
	if t.tx == nil {
		nb.BeginTx(pgx.TxOptions{})
		what = append(what, "")
	}
	at := len(t.queue)
	if t.spAt >= 0 {
		at = t.spAt
	}
	for i := 0; i <= len(t.queue); i++ {
		if i == at && t.pending != "" {
			nb.Queue("SAVEPOINT " + t.pending)
			what = append(what, "")
		}
		if i < len(t.queue) {
			nb.Queue(t.queue[i].sql, t.queue[i].args...)
			what = append(what, t.queue[i].sql)
		}
	}
	nb.QueuedQueries = append(nb.QueuedQueries, b.QueuedQueries...)
	return nb, what
}

// Commit commits what was written; nothing when nothing was.
func (t *lazyTx) Commit(ctx context.Context) error {
	t.unmark()
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
	t.queue, t.spAt, t.pending, t.onServer = t.queue[:0], -1, "", ""
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
	begin := t.tx == nil
	nb, what := t.prefixed(b)
	if len(what) == 0 {
		return t.tx.SendBatch(ctx, b)
	}
	var br pgx.BatchResults
	if begin {
		br = t.pool.SendBatch(ctx, nb)
		// The transaction is known before the batch is read; if the batch
		// failed before BEGIN, it is closed and says so.
		t.tx = br.Tx()
	} else {
		br = t.tx.SendBatch(ctx, nb)
	}
	// Sent: whatever its outcome, nothing waits any more.
	if t.pending != "" {
		t.onServer = t.pending
	}
	t.queue, t.spAt, t.pending = nil, -1, ""
	for i, sql := range what {
		if _, err := br.Exec(); err != nil {
			switch {
			case begin && i == 0:
				err = fmt.Errorf("projector: begin: %w", err)
			case sql == "":
				err = fmt.Errorf("projector: savepoint: %w", err)
			default:
				err = &StatementError{SQL: sql, Err: err}
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
