package projector

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
)

// A batch whose partitions only queue statements commits them without a
// single savepoint: each would be a subtransaction, and thousands of them
// nested made PostgreSQL's backend spend most of a catch-up batch walking
// them. A partition that sends a statement directly still gets its
// savepoint, before its own statements and after the others', and rolls
// back to it alone.
func TestQueuedPartitionsCommitWithoutSavepoints(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := devtest.Pool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE sp (v int)`); err != nil {
		t.Fatal(err)
	}
	savepoints := func(lt *lazyTx) int {
		nb, _ := lt.prefixed(&pgx.Batch{})
		n := 0
		for _, q := range nb.QueuedQueries {
			if strings.HasPrefix(q.SQL, "SAVEPOINT") {
				n++
			}
		}
		return n
	}

	lt := newLazyTx(pool)
	defer lt.Rollback(ctx) //nolint:errcheck
	for i := range 100 {
		lt.mark("p" + string(rune('a'+i%26)))
		lt.Queue(`INSERT INTO sp VALUES ($1)`, i)
	}
	// Were a statement sent now, the last partition's savepoint would go
	// before its statement, and only that one.
	if n := savepoints(lt); n != 1 {
		t.Fatalf("a direct statement now would send %d savepoints, want 1", n)
	}
	nb, _ := lt.prefixed(&pgx.Batch{})
	if q := nb.QueuedQueries[len(nb.QueuedQueries)-2].SQL; !strings.HasPrefix(q, "SAVEPOINT") {
		t.Fatalf("the savepoint is not right before the last partition's statement: %q", q)
	}
	lt.unmark()
	if n := savepoints(lt); n != 0 {
		t.Fatalf("the commit would send %d savepoints, want 0", n)
	}

	// A partition that queued and then failed drops its statements only.
	lt.mark("px")
	lt.Queue(`INSERT INTO sp VALUES ($1)`, 1000)
	if err := lt.rollback(ctx, "px"); err != nil {
		t.Fatal(err)
	}
	// A partition that reads establishes its savepoint; its rollback
	// undoes what it sent and what it queued, not the others' writes.
	lt.mark("py")
	lt.Queue(`INSERT INTO sp VALUES ($1)`, 2000)
	var n int
	if err := lt.QueryRow(ctx, `SELECT count(*) FROM sp`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 101 {
		t.Fatalf("the read saw %d rows, want 101 (100 partitions and its own)", n)
	}
	lt.Queue(`INSERT INTO sp VALUES ($1)`, 2001)
	if err := lt.rollback(ctx, "py"); err != nil {
		t.Fatal(err)
	}
	if err := lt.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	n, sum := countSum(t, pool, "sp")
	if n != 100 || sum != 99*100/2 {
		t.Fatalf("committed %d rows summing to %d, want the 100 partitions' rows (sum 4950)", n, sum)
	}
}

// Partitions that each send a statement directly each establish their
// savepoint; the next partition releases the previous one, so savepoints
// never nest (thousands of nested ones make every visibility check walk
// them), and each partition still rolls back alone.
func TestEstablishedSavepointsDoNotNest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := devtest.Pool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE spn (v int)`); err != nil {
		t.Fatal(err)
	}
	lt := newLazyTx(pool)
	defer lt.Rollback(ctx) //nolint:errcheck
	for i := range 50 {
		name := fmt.Sprintf("p%d", i)
		lt.mark(name)
		var n int
		if err := lt.QueryRow(ctx, `SELECT count(*) FROM spn`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		lt.Queue(`INSERT INTO spn VALUES ($1)`, i)
		if i == 30 {
			// Partition 30 fails after its read: only its insert goes.
			if err := lt.rollback(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := lt.flush(ctx); err != nil {
		t.Fatal(err)
	}
	rows, total := countSum(t, lt, "spn")
	if rows != 49 || total != 49*50/2-30 {
		t.Fatalf("the transaction holds %d rows summing to %d, want every partition's but 30's", rows, total)
	}
	// p48 was released when p49 began: it no longer exists.
	if _, err := lt.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT p48"); err == nil {
		t.Fatal("savepoint p48 still exists: savepoints nest")
	}
	lt2 := newLazyTx(pool)
	defer lt2.Rollback(ctx) //nolint:errcheck
	for i := range 3 {
		lt2.mark(fmt.Sprintf("q%d", i))
		if _, err := lt2.Exec(ctx, `INSERT INTO spn VALUES ($1)`, 100+i); err != nil {
			t.Fatal(err)
		}
	}
	if err := lt2.rollback(ctx, "q2"); err != nil {
		t.Fatal(err)
	}
	if err := lt2.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	n, sum := countSum(t, pool, "spn")
	if n != 2 || sum != 201 {
		t.Fatalf("committed %d rows summing to %d, want q0 and q1's (100, 101)", n, sum)
	}
}

// countSum is the number of rows of table and the sum of their v, as q
// sees them.
func countSum(t *testing.T, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, table string) (n, sum int) {
	t.Helper()
	if err := q.QueryRow(context.Background(), `SELECT count(*), coalesce(sum(v), 0) FROM `+table).Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	return n, sum
}
