package eventstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func setup(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool := devtest.Pool(t)
	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

func TestMigrateIsIdempotentAndConcurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := devtest.Pool(t)
	var wg sync.WaitGroup
	applied := make([][]int, 4)
	errs := make([]error, 4)
	for i := range 4 {
		wg.Go(func() { applied[i], errs[i] = eventstore.Migrate(ctx, pool) })
	}
	wg.Wait()
	total := 0
	for i := range 4 {
		if errs[i] != nil {
			t.Fatalf("migrate %d: %v", i, errs[i])
		}
		total += len(applied[i])
	}
	ms, _ := eventstore.Migrations()
	if total != len(ms) {
		t.Fatalf("applied %d migrations in all, want %d", total, len(ms))
	}
	again, err := eventstore.Migrate(ctx, pool)
	if err != nil || len(again) != 0 {
		t.Fatalf("second migrate applied %v, %v; want nothing", again, err)
	}
}

func TestAppendAndConflict(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := setup(t)

	res, err := eventstore.Append(ctx, pool, "wallet", "w1", eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"owner": "ann"},
			Metadata: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
		eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: json.RawMessage(`{"amount":500}`)},
	)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 2 || res.LastPosition != res.FirstPosition+1 {
		t.Fatalf("append result %+v", res)
	}

	_, err = eventstore.Append(ctx, pool, "wallet", "w1", 1, eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: map[string]int{"amount": 1}})
	var conflict *eventstore.VersionConflictError
	if !errors.Is(err, eventstore.ErrVersionConflict) || !errors.As(err, &conflict) || conflict.Actual != 2 || conflict.Expected != 1 {
		t.Fatalf("append at stale version: got %v, want a version conflict expected 1 actual 2", err)
	}
	if _, err := eventstore.Append(ctx, pool, "wallet", "w1", eventstore.ExpectAny, eventstore.NewEvent{Type: "MoneyWasWithdrawnFromWallet", Payload: map[string]int{"amount": 100}}); err != nil {
		t.Fatal(err)
	}

	evs, err := eventstore.ReadAggregate(ctx, pool, "wallet", "w1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 {
		t.Fatalf("read %d events, want 3", len(evs))
	}
	for i, e := range evs {
		if e.Version != int64(i+1) {
			t.Fatalf("event %d has version %d", i, e.Version)
		}
	}
	if got := evs[0].Metadata.TraceParent(); got != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
		t.Fatalf("traceparent = %q", got)
	}
	var p struct{ Owner string }
	if err := json.Unmarshal(evs[0].Payload, &p); err != nil || p.Owner != "ann" {
		t.Fatalf("payload %s: %v", evs[0].Payload, err)
	}

	all, err := eventstore.ReadFrom(ctx, pool, evs[0].Position, 10)
	if err != nil || len(all) != 2 {
		t.Fatalf("ReadFrom after first: %d events, %v", len(all), err)
	}
}

func TestConcurrentAppendsOneWins(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := setup(t)
	const writers = 8
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			_, errs[i] = eventstore.Append(ctx, pool, "ticket", "t1", eventstore.ExpectNoStream,
				eventstore.NewEvent{Type: "TicketWasRegistered", Payload: map[string]string{"type": "bug"}})
		})
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case errors.Is(err, eventstore.ErrVersionConflict):
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d writers won, want exactly 1", wins)
	}
}

func TestAppendRejectsBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := setup(t)
	cases := map[string][]eventstore.NewEvent{
		"no events":    nil,
		"no type":      {{Payload: map[string]int{}}},
		"invalid json": {{Type: "X", Payload: json.RawMessage(`{"a":`)}},
		"unmarshal":    {{Type: "X", Payload: make(chan int)}},
	}
	for name, evs := range cases {
		if _, err := eventstore.Append(ctx, pool, "x", "1", eventstore.ExpectAny, evs...); !errors.Is(err, eventstore.ErrInvalidEvent) {
			t.Errorf("%s: got %v, want ErrInvalidEvent", name, err)
		}
	}
}

// TestReadCommittedWaitsForOpenTransactions shows the gap-safe horizon: a row
// written by an open transaction holds back every row of later transactions
// until it commits, and a rolled-back row never appears nor stalls reading.
func TestReadCommittedWaitsForOpenTransactions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := setup(t)
	add := func(id string) {
		t.Helper()
		if _, err := eventstore.Append(ctx, pool, "wallet", id, eventstore.ExpectAny, eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"owner": id}}); err != nil {
			t.Fatal(err)
		}
	}
	add("before")

	long, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Rollback(ctx) //nolint:errcheck
	if _, err := eventstore.AppendTx(ctx, long, "wallet", "long", eventstore.ExpectAny, eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	rolled, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eventstore.AppendTx(ctx, rolled, "wallet", "rolled", eventstore.ExpectAny, eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	add("after")
	if err := rolled.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	ids := func(evs []eventstore.Event) (out []string) {
		for _, e := range evs {
			out = append(out, e.AggregateID)
		}
		return out
	}
	// The horizon is cluster-wide: other tests' transactions may hold it
	// back for a moment too, so read until the expected rows arrive.
	var cur eventstore.Cursor
	var got []string
	devtest.Eventually(t, 10*time.Second, func() error {
		evs, c, err := eventstore.ReadCommitted(ctx, pool, cur, 100, eventstore.Filter{})
		if err != nil {
			return err
		}
		cur, got = c, append(got, ids(evs)...)
		if len(got) == 0 {
			return errors.New("nothing read yet")
		}
		return nil
	})
	if len(got) != 1 || got[0] != "before" {
		t.Fatalf("with a transaction open: read %v, want [before]", got)
	}
	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got = nil
	devtest.Eventually(t, 10*time.Second, func() error {
		evs, c, err := eventstore.ReadCommitted(ctx, pool, cur, 100, eventstore.Filter{})
		if err != nil {
			return err
		}
		cur, got = c, append(got, ids(evs)...)
		if len(got) < 2 {
			return fmt.Errorf("read %v so far", got)
		}
		return nil
	})
	if len(got) != 2 || got[0] != "long" || got[1] != "after" {
		t.Fatalf("after commit: read %v, want [long after]", got)
	}
}

func TestReadCommittedFilterAdvancesCursor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := setup(t)
	for _, agg := range []string{"wallet", "ticket", "wallet", "order"} {
		typ := map[string]string{"wallet": "Wallet.Opened", "ticket": "Ticket.Registered", "order": "Order.Created"}[agg]
		if _, err := eventstore.Append(ctx, pool, agg, "x"+typ, eventstore.ExpectAny, eventstore.NewEvent{Type: typ}); err != nil && !errors.Is(err, eventstore.ErrVersionConflict) {
			t.Fatal(err)
		}
	}
	devtest.Eventually(t, 10*time.Second, func() error {
		evs, _, err := eventstore.ReadCommitted(ctx, pool, eventstore.Cursor{}, 100, eventstore.Filter{})
		if err == nil && len(evs) != 4 {
			err = fmt.Errorf("%d of 4 rows below the horizon", len(evs))
		}
		return err
	})
	f := eventstore.Filter{EventTypeLike: []string{eventstore.GlobToLike("Ticket.*"), eventstore.GlobToLike("Order.Created")}}
	evs, cur, err := eventstore.ReadCommitted(ctx, pool, eventstore.Cursor{}, 2, f)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Type != "Ticket.Registered" {
		t.Fatalf("first page: %+v", evs)
	}
	evs, cur2, err := eventstore.ReadCommitted(ctx, pool, cur, 2, f)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Type != "Order.Created" || !cur.Less(cur2) {
		t.Fatalf("second page: %+v (cursor %v → %v)", evs, cur, cur2)
	}
	evs, _, err = eventstore.ReadCommitted(ctx, pool, cur2, 2, eventstore.Filter{AggregateTypes: []string{"wallet"}})
	if err != nil || len(evs) != 0 {
		t.Fatalf("nothing after the end: %+v %v", evs, err)
	}
}

func TestGlobToLike(t *testing.T) {
	for glob, want := range map[string]string{
		"Ticket.*":      "Ticket.%",
		"Order.Created": "Order.Created",
		"a_b%c?":        `a\_b\%c_`,
	} {
		if got := eventstore.GlobToLike(glob); got != want {
			t.Errorf("GlobToLike(%q) = %q, want %q", glob, got, want)
		}
	}
}

// TestReadCommittedPageByteBudget: a page stops before the event that would
// take it past the byte budget, an event larger than the budget comes alone,
// rows the filter skips cost nothing, and pages follow each other without a
// gap or a repeat.
func TestReadCommittedPageByteBudget(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := setup(t)
	blob := func(n int) eventstore.NewEvent {
		return eventstore.NewEvent{Type: "Blob", Payload: map[string]string{"b": strings.Repeat("x", n)}}
	}
	// Sizes in order: 1000 1000 5000 1000 1000, then wallet 1000, ticket
	// 50000, wallet 1000.
	for i, n := range []int{1000, 1000, 5000, 1000, 1000} {
		if _, err := eventstore.Append(ctx, pool, "blob", fmt.Sprint(i), eventstore.ExpectAny, blob(n)); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range []int{1000, 50000, 1000} {
		agg := []string{"wallet", "ticket", "wallet"}[i]
		if _, err := eventstore.Append(ctx, pool, agg, fmt.Sprint(i), eventstore.ExpectAny, blob(n)); err != nil {
			t.Fatal(err)
		}
	}
	devtest.Eventually(t, 10*time.Second, func() error {
		evs, _, err := eventstore.ReadCommitted(ctx, pool, eventstore.Cursor{}, 100, eventstore.Filter{})
		if err == nil && len(evs) != 8 {
			err = fmt.Errorf("%d of 8 rows below the horizon", len(evs))
		}
		return err
	})
	lim := eventstore.PageLimits{Rows: 100, Bytes: 2500}
	var (
		cur        eventstore.Cursor
		afterBlobs eventstore.Cursor // the last blob's
		sizes      []string
		all        []int64
	)
	for range 20 {
		p, err := eventstore.ReadCommittedPage(ctx, pool, cur, lim, eventstore.Filter{AggregateTypes: []string{"blob"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Events) == 0 {
			break
		}
		var got int64
		var page []string
		for _, e := range p.Events {
			got += int64(len(e.Payload) + len("{}"))
			page = append(page, fmt.Sprint(len(e.Payload)/1000))
			all = append(all, e.Position)
			afterBlobs = e.Cursor()
		}
		if got != p.Bytes {
			t.Errorf("page holds %d bytes, Bytes says %d", got, p.Bytes)
		}
		if p.Bytes > lim.Bytes && len(p.Events) > 1 {
			t.Errorf("page of %d events holds %d bytes, over the budget", len(p.Events), p.Bytes)
		}
		sizes = append(sizes, strings.Join(page, "+")+fmt.Sprintf("(cut %v)", p.Cut))
		cur = p.Scanned
	}
	if got := strings.Join(sizes, " "); got != "1+1(cut true) 5(cut true) 1+1(cut false)" {
		t.Fatalf("pages (KB, rounded down): %s", got)
	}
	for i := 1; i < len(all); i++ {
		if all[i] <= all[i-1] {
			t.Fatalf("positions out of order or repeated: %v", all)
		}
	}
	// Rows the filter skips cost nothing: the 50 kB ticket between the two
	// wallets does not cut the page, and the page passes over it.
	cur = afterBlobs
	p, err := eventstore.ReadCommittedPage(ctx, pool, cur, lim, eventstore.Filter{AggregateTypes: []string{"wallet"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Events) != 2 || p.Rows != 3 || p.Cut || p.More(lim) {
		t.Fatalf("filtered page: %d events, %d rows, cut %v", len(p.Events), p.Rows, p.Cut)
	}
	// Unfiltered, the ticket comes alone after the first wallet.
	p, err = eventstore.ReadCommittedPage(ctx, pool, cur, lim, eventstore.Filter{})
	if err != nil || len(p.Events) != 1 || !p.Cut || !p.More(lim) {
		t.Fatalf("unfiltered page: %+v, %v", p, err)
	}
	p, err = eventstore.ReadCommittedPage(ctx, pool, p.Scanned, lim, eventstore.Filter{})
	if err != nil || len(p.Events) != 1 || p.Events[0].AggregateType != "ticket" || !p.Cut {
		t.Fatalf("the large ticket does not come alone: %+v, %v", p, err)
	}
	// A row limit still applies.
	p, err = eventstore.ReadCommittedPage(ctx, pool, eventstore.Cursor{}, eventstore.PageLimits{Rows: 3}, eventstore.Filter{})
	if err != nil || len(p.Events) != 3 || p.Cut || !p.More(eventstore.PageLimits{Rows: 3}) {
		t.Fatalf("row-limited page: %d events, cut %v, %v", len(p.Events), p.Cut, err)
	}
}
