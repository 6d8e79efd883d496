package projector_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projector"
)

// The transaction handlers get from a PostgreSQL batch defers BEGIN and
// savepoints to the next statement; every way of sending one must still
// work, and a rollback to a savepoint must undo exactly the partition's
// writes.
func TestPGBatchTransactionCalls(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := devtest.Pool(t)
	st := projector.NewPGStore(pool, "calls")
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE calls (v int)`); err != nil {
		t.Fatal(err)
	}
	b, err := st.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Rollback(ctx)
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("savepoint", b.Savepoint(ctx))
	var two int
	must("QueryRow as first statement", b.Tx().QueryRow(ctx, `SELECT 1 + $1::int`, 1).Scan(&two))
	if two != 2 {
		t.Fatalf("QueryRow = %d", two)
	}
	must("savepoint", b.Savepoint(ctx))
	// No arguments: the simple protocol, several statements.
	_, err = b.Tx().Exec(ctx, `INSERT INTO calls VALUES (1); INSERT INTO calls VALUES (2)`)
	must("Exec of two statements", err)
	must("savepoint", b.Savepoint(ctx))
	rows, err := b.Tx().Query(ctx, `SELECT v FROM calls WHERE v >= $1 ORDER BY v`, 1)
	must("Query after a savepoint", err)
	vs, err := pgx.CollectRows(rows, pgx.RowTo[int])
	must("rows", err)
	if len(vs) != 2 {
		t.Fatalf("Query read %v", vs)
	}
	must("savepoint", b.Savepoint(ctx))
	batch := &pgx.Batch{}
	batch.Queue(`INSERT INTO calls VALUES ($1)`, 3)
	batch.Queue(`INSERT INTO calls VALUES ($1)`, 4)
	must("SendBatch after a savepoint", b.Tx().SendBatch(ctx, batch).Close())
	_, err = b.Tx().CopyFrom(ctx, pgx.Identifier{"calls"}, []string{"v"}, pgx.CopyFromRows([][]any{{5}}))
	must("CopyFrom", err)
	// Nested transactions are savepoints: a rolled back one undoes its
	// writes only, a committed one keeps them until its partition fails.
	nested, err := b.Tx().Begin(ctx)
	must("nested begin", err)
	_, err = nested.Exec(ctx, `INSERT INTO calls VALUES ($1)`, 7)
	must("nested insert", err)
	must("nested rollback", nested.Rollback(ctx))
	if err := nested.Commit(ctx); err == nil {
		t.Fatal("commit after rollback succeeded")
	}
	nested, err = b.Tx().Begin(ctx)
	must("nested begin", err)
	_, err = nested.Exec(ctx, `INSERT INTO calls VALUES ($1)`, 8)
	must("nested insert", err)
	must("nested commit", nested.Commit(ctx))
	var seen []int
	rows, err = b.Tx().Query(ctx, `SELECT v FROM calls WHERE v > 6 ORDER BY v`)
	must("read nested", err)
	seen, err = pgx.CollectRows(rows, pgx.RowTo[int])
	must("read nested", err)
	if len(seen) != 1 || seen[0] != 8 {
		t.Fatalf("after nested transactions the batch sees %v, want [8]", seen)
	}
	// The partition that wrote 3, 4, 5 and 8 fails: its writes go.
	must("rollback", b.RollbackToSavepoint(ctx))
	// A partition that writes nothing rolls back nothing.
	must("savepoint", b.Savepoint(ctx))
	must("rollback without statements", b.RollbackToSavepoint(ctx))
	// And a failing statement is undone with its partition.
	must("savepoint", b.Savepoint(ctx))
	if _, err := b.Tx().Exec(ctx, `INSERT INTO calls VALUES ($1::int / 0)`, 6); err == nil {
		t.Fatal("division by zero succeeded")
	}
	must("rollback after an error", b.RollbackToSavepoint(ctx))
	_, err = b.Commit(ctx)
	must("commit", err)
	var got []int
	rows, err = pool.Query(ctx, `SELECT v FROM calls ORDER BY v`)
	must("read", err)
	got, err = pgx.CollectRows(rows, pgx.RowTo[int])
	must("read", err)
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("committed %v, want [1 2]", got)
	}

	// A batch that wrote nothing commits nothing and holds no connection.
	empty, err := st.Begin(ctx)
	must("begin", err)
	_, err = empty.Commit(ctx)
	must("empty commit", err)
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Fatalf("%d connections still acquired", n)
	}
	// A committed batch gives its connection back too, still open.
	before := pool.Stat().NewConnsCount()
	for range 3 {
		b, err := st.Begin(ctx)
		must("begin", err)
		_, err = b.Tx().Exec(ctx, `INSERT INTO calls VALUES ($1)`, 9)
		must("insert", err)
		_, err = b.Commit(ctx)
		must("commit", err)
		if n := pool.Stat().AcquiredConns(); n != 0 {
			t.Fatalf("%d connections still acquired after a commit", n)
		}
	}
	if n := pool.Stat().NewConnsCount() - before; n > 1 {
		t.Fatalf("three commits opened %d connections; a committed connection should be reused", n)
	}
}
