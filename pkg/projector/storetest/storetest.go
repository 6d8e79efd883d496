// Package storetest is the behaviour suite every projector.StateStore must
// pass. A store's own test calls Run with a function that returns a fresh,
// uninitialised store (its own bucket, its own projection name …) and the
// Options that describe what the store promises beyond the common contract:
//
//	func TestPGStoreSuite(t *testing.T) {
//		pool := …
//		storetest.Run(t, func(t *testing.T) projector.StateStore {
//			return projector.NewPGStore(pool, uniqueName(t))
//		}, storetest.Options{Transactional: true, TokensFenceCommits: true})
//	}
//
// Every case runs as a parallel subtest with its own store, so stores built
// on one server or one database must keep apart what different instances
// write (the suite checks that too).
//
// The common contract, checked for every store:
//   - Init is idempotent.
//   - Records round-trip through Begin/Put/Commit and LoadSlot/Get/Summary
//     with every field; State is compared as JSON values, not bytes.
//   - Put is a compare-and-set on Record.Revision (0 creates): a stale
//     revision, or creating a record that exists, fails the commit with an
//     error matching projector.ErrFenced, a *projector.FencedError naming
//     the slot; the refused record is not written. Each record is written
//     atomically.
//   - Commit returns, per key, the record's new revision, greater than the
//     one before; it is the revision Get and LoadSlot report.
//   - A watermark written with a higher value is read back by LoadSlot.
//     (Whether a lower value replaces it is not part of the contract:
//     PGStore keeps the greatest, KVStore the last.)
//   - Fence tokens only grow: the same token again is fine, an older one is
//     refused with ErrFenced.
//   - A commit racing a new owner's Fence either lands before it or fails
//     with ErrFenced having written nothing; no other error comes out.
//   - Reset removes every record and watermark; the store works after it.
//   - Of two batches that update a record from the same revision at the same
//     time, exactly one commits.
//
// What depends on Options is described on its fields.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projector"
)

// Options tell the suite what a store promises beyond the common contract.
type Options struct {
	// Transactional stores return a pgx.Tx from Batch.Tx, honour Savepoint
	// and RollbackToSavepoint on it, and commit a batch all or nothing:
	// when one record is refused, no other record, watermark or Tx write
	// of the batch is kept. A store that is not transactional (KVStore)
	// writes each record atomically on its own, returns a nil Tx and treats
	// savepoints as no-ops. Default false.
	Transactional bool
	// TokensFenceCommits stores refuse with ErrFenced a commit whose Put or
	// Watermark carries a token older than the slot's current fence
	// (PGStore). A store without it (KVStore) relies on the per-record
	// compare-and-set alone to keep a replaced owner from overwriting
	// records; its Fence only keeps tokens growing. Default false.
	TokensFenceCommits bool
	// FenceClaimsWatermarks stores (KVStore) take a slot's watermark over
	// in Fence: a watermark write of a commit racing the Fence is refused
	// with ErrFenced although the commit's tokens are current. The records
	// of such a commit, each atomic on its own, may have been written; its
	// watermark is not. Default false.
	FenceClaimsWatermarks bool
	// Tenant is for stores whose batches are projector.TenantBatch
	// (TenantStore): every batch the suite begins Uses this tenant at once,
	// as the runner does before a partition's writes, and every record the
	// suite puts carries it. The suite's checks then hold within that
	// tenant's database. Default "": batches are used as they are.
	Tenant string
}

// timeout bounds each case; the cases wait on the store, never on a clock.
const timeout = 60 * time.Second

// Run runs the suite against stores made by newStore, one per subtest.
// newStore must return a store that shares no records with any other store
// it returned; the suite calls Init itself.
func Run(t *testing.T, newStore func(t *testing.T) projector.StateStore, opts Options) {
	t.Helper()
	s := &suite{newStore: newStore, opts: opts}
	cases := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"InitIsIdempotent", s.initIsIdempotent},
		{"EmptyStore", s.emptyStore},
		{"EmptyCommit", s.emptyCommit},
		{"PutAndLoad", s.putAndLoad},
		{"UpdateReplacesEveryField", s.updateReplacesEveryField},
		{"StaleRevisionIsFenced", s.staleRevisionIsFenced},
		{"CreateExistingIsFenced", s.createExistingIsFenced},
		{"RefusedRecordKeepsWatermark", s.refusedRecordKeepsWatermark},
		{"FailedCommitWritesNothing", s.failedCommitWritesNothing},
		{"RollbackWritesNothing", s.rollbackWritesNothing},
		{"Watermarks", s.watermarks},
		{"FenceTokensOnlyGrow", s.fenceTokensOnlyGrow},
		{"OlderTokenCommitIsFenced", s.olderTokenCommitIsFenced},
		{"FenceDuringCommit", s.fenceDuringCommit},
		{"SummaryListsParked", s.summaryListsParked},
		{"Reset", s.reset},
		{"StoresAreIsolated", s.storesAreIsolated},
		{"Savepoints", s.savepoints},
		{"ConcurrentUpdatesOneWins", s.concurrentUpdatesOneWins},
		{"ConcurrentCreatesOneWins", s.concurrentCreatesOneWins},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t)
		})
	}
}

type suite struct {
	newStore func(t *testing.T) projector.StateStore
	opts     Options
}

// setup returns a fresh, initialised store and a context for the case.
func (s *suite) setup(t *testing.T) (projector.StateStore, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	st := s.newStore(t)
	if s.opts.Tenant != "" {
		st = tenantStore{st, s.opts.Tenant}
	}
	if err := st.Init(ctx); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return st, ctx
}

// tenantStore begins batches that Use one tenant and tag records with it.
type tenantStore struct {
	projector.StateStore
	tenant string
}

type tenantBatch struct {
	projector.TenantBatch
	tenant string
}

func (s tenantStore) Begin(ctx context.Context) (projector.Batch, error) {
	b, err := s.StateStore.Begin(ctx)
	if err != nil {
		return nil, err
	}
	tb, ok := b.(projector.TenantBatch)
	if !ok {
		b.Rollback(ctx)
		return nil, fmt.Errorf("storetest: Options.Tenant is set but %T is not a projector.TenantBatch", b)
	}
	if err := tb.Use(ctx, s.tenant); err != nil {
		tb.Rollback(ctx)
		return nil, fmt.Errorf("storetest: Use(%q): %w", s.tenant, err)
	}
	return tenantBatch{tb, s.tenant}, nil
}

func (b tenantBatch) Put(slot int, token uint64, r projector.Record) {
	r.Tenant = b.tenant
	b.TenantBatch.Put(slot, token, r)
}

// Slots used by the cases: 1 and 10 catch a store that selects a slot's
// records by prefix.
const (
	slotA = 1
	slotB = 10
	token = 5
)

func (s *suite) initIsIdempotent(t *testing.T) {
	st, ctx := s.setup(t)
	if err := st.Init(ctx); err != nil {
		t.Fatalf("second Init: %v", err)
	}
	fence(t, ctx, st, slotA, token)
	rev := mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, token, fullRecord("a", 1))
	})["a"]
	if err := st.Init(ctx); err != nil {
		t.Fatalf("Init on a store with records: %v", err)
	}
	got := mustGet(t, ctx, st, slotA, "a")
	assertRecord(t, got, fullRecord("a", 1), rev)
}

func (s *suite) emptyStore(t *testing.T) {
	st, ctx := s.setup(t)
	for _, slot := range []int{0, slotA, slotB} {
		recs, wm, err := st.LoadSlot(ctx, slot)
		if err != nil {
			t.Fatalf("LoadSlot(%d): %v", slot, err)
		}
		if len(recs) != 0 || wm != 0 {
			t.Errorf("LoadSlot(%d) of an empty store = %d records, watermark %d; want 0, 0", slot, len(recs), wm)
		}
	}
	r, err := st.Get(ctx, slotA, "missing")
	if err != nil || r != nil {
		t.Errorf("Get of a missing record = %+v, %v; want nil, nil", r, err)
	}
	parked, n, err := st.Summary(ctx)
	if err != nil {
		t.Fatalf("Summary: %v", err)
	}
	if len(parked) != 0 || n != 0 {
		t.Errorf("Summary of an empty store = %d parked, %d partitions; want 0, 0", len(parked), n)
	}
}

func (s *suite) emptyCommit(t *testing.T) {
	st, ctx := s.setup(t)
	revs := mustCommit(t, ctx, st, func(projector.Batch) {})
	if len(revs) != 0 {
		t.Errorf("Commit of an empty batch returned revisions %v; want none", revs)
	}
}

func (s *suite) putAndLoad(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	fence(t, ctx, st, slotB, token)
	full := fullRecord("wallet/42.a b:ü", 7) // characters a key-value store must escape
	minimal := projector.Record{Key: "m", Seq: 3}
	other := fullRecord("other", 9)
	revs := mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, token, full)
		b.Put(slotA, token, minimal)
		b.Put(slotB, token, other)
	})
	for _, k := range []string{full.Key, minimal.Key, other.Key} {
		if revs[k] == 0 {
			t.Errorf("Commit returned revision %d for new record %q; want non-zero (all: %v)", revs[k], k, revs)
		}
	}

	recs := mustLoad(t, ctx, st, slotA)
	if got, want := keys(recs), []string{minimal.Key, full.Key}; !slices.Equal(got, want) {
		t.Fatalf("LoadSlot(%d) keys = %q; want %q (records of slot %d must not be returned)", slotA, got, want, slotB)
	}
	byKey := map[string]projector.Record{}
	for _, r := range recs {
		byKey[r.Key] = r
		if s.opts.Tenant != "" && r.Tenant != s.opts.Tenant {
			t.Errorf("record %q was loaded from tenant %q; want %q", r.Key, r.Tenant, s.opts.Tenant)
		}
	}
	assertRecord(t, ptr(byKey[full.Key]), full, revs[full.Key])
	assertRecord(t, ptr(byKey[minimal.Key]), minimal, revs[minimal.Key])
	if recs := mustLoad(t, ctx, st, slotB); len(recs) != 1 {
		t.Errorf("LoadSlot(%d) = %d records; want 1", slotB, len(recs))
	} else {
		assertRecord(t, &recs[0], other, revs[other.Key])
	}

	assertRecord(t, mustGet(t, ctx, st, slotA, full.Key), full, revs[full.Key])
	assertRecord(t, mustGet(t, ctx, st, slotA, minimal.Key), minimal, revs[minimal.Key])
	assertRecord(t, mustGet(t, ctx, st, slotB, other.Key), other, revs[other.Key])
	if r, err := st.Get(ctx, slotA, "absent"); err != nil || r != nil {
		t.Errorf("Get of a missing record = %+v, %v; want nil, nil", r, err)
	}
}

func (s *suite) updateReplacesEveryField(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	rec := fullRecord("k", 1)
	rev1 := mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, token, rec) })["k"]

	// Update with the revision Commit returned: the runner does not re-read.
	upd := projector.Record{Key: "k", Seq: 2, State: json.RawMessage(`{"n":2}`), Revision: rev1}
	rev2 := mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, token, upd) })["k"]
	if rev2 <= rev1 {
		t.Fatalf("revision after update = %d; want greater than %d", rev2, rev1)
	}
	assertRecord(t, mustGet(t, ctx, st, slotA, "k"), upd, rev2)

	// And again with the revision Get reports.
	got := mustGet(t, ctx, st, slotA, "k")
	upd2 := fullRecord("k", 3)
	upd2.Revision = got.Revision
	rev3 := mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, token, upd2) })["k"]
	if rev3 <= rev2 {
		t.Fatalf("revision after second update = %d; want greater than %d", rev3, rev2)
	}
	recs := mustLoad(t, ctx, st, slotA)
	if len(recs) != 1 {
		t.Fatalf("LoadSlot = %d records after updates; want 1", len(recs))
	}
	assertRecord(t, &recs[0], upd2, rev3)
}

func (s *suite) staleRevisionIsFenced(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	rev1 := mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, token, fullRecord("k", 1)) })["k"]
	cur := fullRecord("k", 2)
	cur.Revision = rev1
	rev2 := mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, token, cur) })["k"]

	stale := fullRecord("k", 99)
	stale.Revision = rev1
	_, err := commit(ctx, st, func(b projector.Batch) { b.Put(slotA, token, stale) })
	assertFenced(t, err, slotA)
	assertRecord(t, mustGet(t, ctx, st, slotA, "k"), cur, rev2)

	// A revision from the future is as wrong as one from the past.
	stale.Revision = rev2 + 1000
	_, err = commit(ctx, st, func(b projector.Batch) { b.Put(slotA, token, stale) })
	assertFenced(t, err, slotA)
	assertRecord(t, mustGet(t, ctx, st, slotA, "k"), cur, rev2)

	// Updating a record that does not exist is refused too.
	ghost := fullRecord("ghost", 1)
	ghost.Revision = rev2
	_, err = commit(ctx, st, func(b projector.Batch) { b.Put(slotA, token, ghost) })
	assertFenced(t, err, slotA)
	if r := mustGetOrNil(t, ctx, st, slotA, "ghost"); r != nil {
		t.Errorf("a refused update of a missing record created it: %+v", *r)
	}
}

func (s *suite) createExistingIsFenced(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	orig := fullRecord("k", 1)
	rev := mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, token, orig) })["k"]
	_, err := commit(ctx, st, func(b projector.Batch) { b.Put(slotA, token, fullRecord("k", 50)) })
	assertFenced(t, err, slotA)
	assertRecord(t, mustGet(t, ctx, st, slotA, "k"), orig, rev)
}

// refusedRecordKeepsWatermark: a batch whose record of a slot is refused
// (another writer moved it) must not move that slot's watermark either, in
// any store: a watermark past a record that was not written would make the
// next owner skip the partition's events.
func (s *suite) refusedRecordKeepsWatermark(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	rev := mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, token, fullRecord("k", 1))
		b.Watermark(slotA, token, 10)
	})["k"]
	moved := fullRecord("k", 2)
	moved.Revision = rev
	rev2 := mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, token, moved) })["k"]

	stale := fullRecord("k", 100)
	stale.Revision = rev // the revision before the other write
	_, err := commit(ctx, st, func(b projector.Batch) {
		b.Put(slotA, token, stale)
		b.Watermark(slotA, token, 100)
	})
	assertFenced(t, err, slotA)
	assertRecord(t, mustGet(t, ctx, st, slotA, "k"), moved, rev2)
	if _, wm := mustLoadWM(t, ctx, st, slotA); wm != 10 {
		t.Errorf("watermark after a batch whose record was refused = %d; want 10 (unchanged)", wm)
	}
}

func (s *suite) failedCommitWritesNothing(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	fence(t, ctx, st, slotB, token)
	orig := fullRecord("k", 1)
	rev := mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, token, orig)
		b.Watermark(slotB, token, 10)
	})["k"]

	var scratch string
	if s.opts.Transactional {
		scratch = createScratch(t, ctx, st)
	}
	_, err := commit(ctx, st, func(b projector.Batch) {
		if scratch != "" {
			execTx(t, ctx, b, `INSERT INTO `+scratch+` (v) VALUES ('in failed batch')`)
		}
		b.Put(slotB, token, fullRecord("valid", 1))
		b.Put(slotA, token, fullRecord("k", 2)) // exists: refused
		b.Watermark(slotB, token, 20)
	})
	assertFenced(t, err, slotA)
	assertRecord(t, mustGet(t, ctx, st, slotA, "k"), orig, rev)
	if !s.opts.Transactional {
		t.Log("store is not transactional: records are atomic one by one; the rest of a refused batch may be written")
		return
	}
	if r := mustGetOrNil(t, ctx, st, slotB, "valid"); r != nil {
		t.Errorf("transactional store wrote a record of a refused batch: %+v", *r)
	}
	if _, wm := mustLoadWM(t, ctx, st, slotB); wm != 10 {
		t.Errorf("watermark of slot %d after a refused batch = %d; want 10 (unchanged)", slotB, wm)
	}
	if rows := scratchRows(t, ctx, st, scratch); len(rows) != 0 {
		t.Errorf("Tx writes of a refused batch were kept: %q", rows)
	}
}

func (s *suite) rollbackWritesNothing(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	var scratch string
	if s.opts.Transactional {
		scratch = createScratch(t, ctx, st)
	}
	b, err := st.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if scratch != "" {
		execTx(t, ctx, b, `INSERT INTO `+scratch+` (v) VALUES ('rolled back')`)
	}
	b.Put(slotA, token, fullRecord("k", 1))
	b.Watermark(slotA, token, 10)
	b.Rollback(ctx)

	recs, wm := mustLoadWM(t, ctx, st, slotA)
	if len(recs) != 0 || wm != 0 {
		t.Errorf("after Rollback LoadSlot = %d records, watermark %d; want 0, 0", len(recs), wm)
	}
	if scratch != "" {
		if rows := scratchRows(t, ctx, st, scratch); len(rows) != 0 {
			t.Errorf("Tx writes of a rolled back batch were kept: %q", rows)
		}
	}
}

func (s *suite) watermarks(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	fence(t, ctx, st, slotB, token)
	mustCommit(t, ctx, st, func(b projector.Batch) { b.Watermark(slotA, token, 10) })
	if _, wm := mustLoadWM(t, ctx, st, slotA); wm != 10 {
		t.Errorf("watermark = %d; want 10", wm)
	}
	if _, wm := mustLoadWM(t, ctx, st, slotB); wm != 0 {
		t.Errorf("watermark of slot %d, never written = %d; want 0", slotB, wm)
	}

	// With records in the same batch, and for two slots at once.
	mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, token, fullRecord("k", 20))
		b.Watermark(slotA, token, 20)
		b.Watermark(slotB, token, 5)
	})
	recs, wm := mustLoadWM(t, ctx, st, slotA)
	if wm != 20 || len(recs) != 1 {
		t.Errorf("LoadSlot(%d) = %d records, watermark %d; want 1, 20", slotA, len(recs), wm)
	}
	if _, wm := mustLoadWM(t, ctx, st, slotB); wm != 5 {
		t.Errorf("watermark of slot %d = %d; want 5", slotB, wm)
	}

	// The last of several higher values wins.
	for _, v := range []uint64{21, 1000, 1 << 40} {
		mustCommit(t, ctx, st, func(b projector.Batch) { b.Watermark(slotA, token, v) })
		if _, wm := mustLoadWM(t, ctx, st, slotA); wm != v {
			t.Errorf("watermark after writing %d = %d", v, wm)
		}
	}
	// A lower value: the store may keep the greatest or the last one, but
	// nothing else.
	mustCommit(t, ctx, st, func(b projector.Batch) { b.Watermark(slotA, token, 30) })
	if _, wm := mustLoadWM(t, ctx, st, slotA); wm != 1<<40 && wm != 30 {
		t.Errorf("watermark after writing 30 below %d = %d; want one of the two", uint64(1<<40), wm)
	} else {
		t.Logf("a lower watermark leaves %d (greatest %d, last 30)", wm, uint64(1<<40))
	}
}

func (s *suite) fenceTokensOnlyGrow(t *testing.T) {
	st, ctx := s.setup(t)
	steps := []struct {
		slot    int
		token   uint64
		fenced  bool
		comment string
	}{
		{slotA, 5, false, "first token"},
		{slotA, 5, false, "same token again"},
		{slotA, 3, true, "older token"},
		{slotA, 7, false, "newer token"},
		{slotA, 5, true, "token older than the newest"},
		{slotA, 7, false, "newest again"},
		{slotB, 1, false, "tokens are per slot"},
	}
	for _, step := range steps {
		err := st.Fence(ctx, step.slot, step.token)
		if !step.fenced {
			if err != nil {
				t.Fatalf("Fence(%d, %d) (%s) = %v; want nil", step.slot, step.token, step.comment, err)
			}
			continue
		}
		if err == nil {
			t.Fatalf("Fence(%d, %d) (%s) = nil; want ErrFenced", step.slot, step.token, step.comment)
		}
		assertFenced(t, err, step.slot)
	}
	// A token refused by Fence is refused for commits too, and Fence keeps
	// the newest; records still commit with it.
	rev := mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, 7, fullRecord("k", 1)) })["k"]
	assertRecord(t, mustGet(t, ctx, st, slotA, "k"), fullRecord("k", 1), rev)
}

func (s *suite) olderTokenCommitIsFenced(t *testing.T) {
	if !s.opts.TokensFenceCommits {
		t.Skip("the store does not fence commits by token (Options.TokensFenceCommits): the per-record compare-and-set is its fence")
	}
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, 5)
	fence(t, ctx, st, slotB, 5)
	rev := mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, 5, fullRecord("k", 1))
		b.Watermark(slotA, 5, 10)
	})["k"]

	// The old owner built a batch; a new owner fences the slot before it
	// commits.
	b, err := st.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	upd := fullRecord("k", 2)
	upd.Revision = rev // a correct revision: only the token is stale
	b.Put(slotA, 5, upd)
	b.Put(slotA, 5, fullRecord("new", 1))
	b.Watermark(slotA, 5, 20)
	fence(t, ctx, st, slotA, 7)
	_, err = b.Commit(ctx)
	assertFenced(t, err, slotA)
	assertRecord(t, mustGet(t, ctx, st, slotA, "k"), fullRecord("k", 1), rev)
	if r := mustGetOrNil(t, ctx, st, slotA, "new"); r != nil {
		t.Errorf("a batch with an older token created a record: %+v", *r)
	}
	if _, wm := mustLoadWM(t, ctx, st, slotA); wm != 10 {
		t.Errorf("watermark after a fenced batch = %d; want 10 (unchanged)", wm)
	}

	// A batch with only a watermark is fenced too.
	_, err = commit(ctx, st, func(b projector.Batch) { b.Watermark(slotA, 5, 30) })
	assertFenced(t, err, slotA)
	if _, wm := mustLoadWM(t, ctx, st, slotA); wm != 10 {
		t.Errorf("watermark after a fenced watermark-only batch = %d; want 10 (unchanged)", wm)
	}

	// A batch that touches another slot with a valid token is refused as a
	// whole in a transactional store; the fenced slot is named.
	_, err = commit(ctx, st, func(b projector.Batch) {
		b.Put(slotB, 5, fullRecord("b", 1))
		b.Put(slotA, 5, fullRecord("a2", 1))
	})
	assertFenced(t, err, slotA)
	var fe *projector.FencedError
	if errors.As(err, &fe) && slices.Contains(fe.Slots, slotB) {
		t.Errorf("FencedError names slot %d, whose token is current: %v", slotB, fe.Slots)
	}
	if s.opts.Transactional {
		if r := mustGetOrNil(t, ctx, st, slotB, "b"); r != nil {
			t.Errorf("a fenced transactional batch wrote a record of another slot: %+v", *r)
		}
	}

	// The new owner commits.
	upd.Seq = 3
	rev2 := mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, 7, upd)
		b.Watermark(slotA, 7, 40)
	})["k"]
	assertRecord(t, mustGet(t, ctx, st, slotA, "k"), upd, rev2)
	if _, wm := mustLoadWM(t, ctx, st, slotA); wm != 40 {
		t.Errorf("watermark of the new owner = %d; want 40", wm)
	}
}

// fenceDuringCommit races a new owner's Fence against the old owner's
// commit: the commit either lands before the fence or is refused with
// ErrFenced, and no other error may come out (a deadlock, say).
func (s *suite) fenceDuringCommit(t *testing.T) {
	st, ctx := s.setup(t)
	const rounds = 20
	tok := uint64(1)
	fence(t, ctx, st, slotA, tok)
	rev := mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, tok, fullRecord("k", 0)) })["k"]
	committed, refused := 0, 0
	curSeq := uint64(0) // the stored record's Seq
	curWM := uint64(0)  // the stored watermark
	for i := range rounds {
		b, err := st.Begin(ctx)
		if err != nil {
			t.Fatalf("Begin: %v", err)
		}
		rec := fullRecord("k", uint64(i+1))
		rec.Revision = rev
		b.Put(slotA, tok, rec)
		b.Watermark(slotA, tok, uint64(i+1))

		start := make(chan struct{})
		var commitErr, fenceErr error
		var revs map[string]uint64
		var wg sync.WaitGroup
		wg.Go(func() {
			<-start
			revs, commitErr = b.Commit(ctx)
		})
		wg.Go(func() {
			<-start
			fenceErr = st.Fence(ctx, slotA, tok+1)
		})
		close(start)
		wg.Wait()
		if fenceErr != nil {
			t.Fatalf("round %d: Fence(%d, %d) during a commit: %v", i, slotA, tok+1, fenceErr)
		}
		tok++
		switch {
		case commitErr == nil:
			committed++
			rev, curSeq, curWM = revs["k"], rec.Seq, rec.Seq
			assertRecord(t, mustGet(t, ctx, st, slotA, "k"), rec, rev)
			if _, wm := mustLoadWM(t, ctx, st, slotA); wm != curWM {
				t.Fatalf("round %d: watermark after a commit = %d; want %d", i, wm, curWM)
			}
		case errors.Is(commitErr, projector.ErrFenced):
			refused++
			if !s.opts.TokensFenceCommits && !s.opts.FenceClaimsWatermarks {
				t.Fatalf("round %d: store without token fencing refused a commit with a current revision: %v", i, commitErr)
			}
			got := mustGet(t, ctx, st, slotA, "k")
			switch {
			case got.Revision == rev && got.Seq == curSeq:
			case s.opts.FenceClaimsWatermarks && !s.opts.Transactional && got.Seq == rec.Seq:
				rev, curSeq = got.Revision, got.Seq // the record landed, its watermark did not
			default:
				t.Fatalf("round %d: commit returned %q but wrote its record: revision %d, seq %d; want %d, %d (unchanged)",
					i, commitErr, got.Revision, got.Seq, rev, curSeq)
			}
			if _, wm := mustLoadWM(t, ctx, st, slotA); wm != curWM {
				t.Fatalf("round %d: commit returned %q but moved the watermark to %d; want %d (unchanged)", i, commitErr, wm, curWM)
			}
		default:
			t.Fatalf("round %d: commit racing a Fence failed with %v; want nil or ErrFenced", i, commitErr)
		}
	}
	t.Logf("%d commits landed before the fence, %d were refused", committed, refused)
}

func (s *suite) summaryListsParked(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	fence(t, ctx, st, slotB, token)
	p1 := fullRecord("p1", 1) // parked
	p2 := fullRecord("p2", 2) // parked, other slot
	ok := fullRecord("ok", 3)
	ok.Parked = nil
	failing := fullRecord("failing", 4)
	failing.Parked = nil // failing but not parked
	failing.State = json.RawMessage(`{"note":"parked"}`)
	revs := mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, token, p1)
		b.Put(slotB, token, p2)
		b.Put(slotA, token, ok)
		b.Put(slotB, token, failing)
	})
	parked, n, err := st.Summary(ctx)
	if err != nil {
		t.Fatalf("Summary: %v", err)
	}
	if n != 4 {
		t.Errorf("Summary partitions = %d; want 4", n)
	}
	sortRecords(parked)
	if got, want := keys(parked), []string{"p1", "p2"}; !slices.Equal(got, want) {
		t.Fatalf("Summary parked = %q; want %q", got, want)
	}
	assertRecord(t, &parked[0], p1, revs["p1"])
	assertRecord(t, &parked[1], p2, revs["p2"])

	// Unparking removes it from the list.
	un := p1
	un.Parked, un.Revision = nil, revs["p1"]
	mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, token, un) })
	parked, n, err = st.Summary(ctx)
	if err != nil {
		t.Fatalf("Summary: %v", err)
	}
	if got := keys(parked); n != 4 || !slices.Equal(got, []string{"p2"}) {
		t.Errorf("Summary after unparking p1 = %q, %d partitions; want [p2], 4", got, n)
	}
}

func (s *suite) reset(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	fence(t, ctx, st, slotB, token)
	mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, token, fullRecord("a", 1))
		b.Put(slotB, token, fullRecord("b", 2))
		b.Watermark(slotA, token, 10)
		b.Watermark(slotB, token, 20)
	})
	if err := st.Reset(ctx); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	for _, slot := range []int{slotA, slotB} {
		recs, wm := mustLoadWM(t, ctx, st, slot)
		if len(recs) != 0 || wm != 0 {
			t.Errorf("after Reset LoadSlot(%d) = %d records, watermark %d; want 0, 0", slot, len(recs), wm)
		}
	}
	if r := mustGetOrNil(t, ctx, st, slotA, "a"); r != nil {
		t.Errorf("after Reset Get = %+v; want nil", *r)
	}
	parked, n, err := st.Summary(ctx)
	if err != nil || len(parked) != 0 || n != 0 {
		t.Errorf("after Reset Summary = %d parked, %d partitions, %v; want 0, 0, nil", len(parked), n, err)
	}

	// The store works after Reset: Init, Fence with the owner's token,
	// create the same keys anew.
	if err := st.Init(ctx); err != nil {
		t.Fatalf("Init after Reset: %v", err)
	}
	fence(t, ctx, st, slotA, token)
	rev := mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, token, fullRecord("a", 3))
		b.Watermark(slotA, token, 5)
	})["a"]
	if rev == 0 {
		t.Errorf("revision of a record created after Reset = 0")
	}
	recs, wm := mustLoadWM(t, ctx, st, slotA)
	if wm != 5 || len(recs) != 1 {
		t.Fatalf("after Reset and a commit LoadSlot = %d records, watermark %d; want 1, 5", len(recs), wm)
	}
	assertRecord(t, &recs[0], fullRecord("a", 3), rev)
	// Reset twice, and on a reset store, is fine.
	for range 2 {
		if err := st.Reset(ctx); err != nil {
			t.Fatalf("Reset again: %v", err)
		}
	}
	if err := st.Init(ctx); err != nil {
		t.Fatalf("Init after Reset: %v", err)
	}
}

func (s *suite) storesAreIsolated(t *testing.T) {
	st, ctx := s.setup(t)
	other, _ := s.setup(t)
	for _, x := range []projector.StateStore{st, other} {
		fence(t, ctx, x, slotA, token)
	}
	rev := mustCommit(t, ctx, st, func(b projector.Batch) {
		b.Put(slotA, token, fullRecord("k", 1))
		b.Watermark(slotA, token, 10)
	})["k"]
	// The other store creates the same key: it is a different record.
	orev := mustCommit(t, ctx, other, func(b projector.Batch) {
		b.Put(slotA, token, fullRecord("k", 2))
		b.Put(slotA, token, fullRecord("only-other", 2))
		b.Watermark(slotA, token, 20)
	})["k"]
	assertRecord(t, mustGet(t, ctx, st, slotA, "k"), fullRecord("k", 1), rev)
	assertRecord(t, mustGet(t, ctx, other, slotA, "k"), fullRecord("k", 2), orev)
	if recs, wm := mustLoadWM(t, ctx, st, slotA); len(recs) != 1 || wm != 10 {
		t.Errorf("LoadSlot of the first store = %q, watermark %d; want [k], 10", keys(recs), wm)
	}
	if _, n, err := st.Summary(ctx); err != nil || n != 1 {
		t.Errorf("Summary of the first store = %d partitions, %v; want 1", n, err)
	}
	if err := other.Reset(ctx); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if recs, wm := mustLoadWM(t, ctx, st, slotA); len(recs) != 1 || wm != 10 {
		t.Errorf("another store's Reset changed this one: LoadSlot = %q, watermark %d; want [k], 10", keys(recs), wm)
	}
}

func (s *suite) savepoints(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	b, err := st.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	if !s.opts.Transactional {
		if tx := b.Tx(); tx != nil {
			t.Errorf("Tx() of a store that is not transactional = %v; want nil", tx)
		}
		// Savepoints are no-ops that must not fail: the runner calls them
		// for every store.
		if err := b.Savepoint(ctx); err != nil {
			t.Errorf("Savepoint: %v", err)
		}
		b.Put(slotA, token, fullRecord("k", 1))
		if err := b.RollbackToSavepoint(ctx); err != nil {
			t.Errorf("RollbackToSavepoint: %v", err)
		}
		if _, err := b.Commit(ctx); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		return
	}
	if b.Tx() == nil {
		b.Rollback(ctx)
		t.Fatal("Tx() of a transactional store is nil")
	}
	b.Rollback(ctx)

	scratch := createScratch(t, ctx, st)
	ins := `INSERT INTO ` + scratch + ` (v) VALUES ($1)`
	revs := mustCommit(t, ctx, st, func(b projector.Batch) {
		execTx(t, ctx, b, ins, "before any savepoint")
		// The runner's pattern: a savepoint per partition, rolled back
		// when the partition fails.
		mustDo(t, "Savepoint", b.Savepoint(ctx))
		execTx(t, ctx, b, ins, "partition 1")
		b.Put(slotA, token, fullRecord("p1", 1))
		mustDo(t, "Savepoint", b.Savepoint(ctx))
		execTx(t, ctx, b, ins, "partition 2 (fails)")
		execTx(t, ctx, b, ins, "partition 2 (fails, again)")
		mustDo(t, "RollbackToSavepoint", b.RollbackToSavepoint(ctx))
		mustDo(t, "Savepoint", b.Savepoint(ctx))
		execTx(t, ctx, b, ins, "partition 3")
		b.Put(slotA, token, fullRecord("p3", 3))
		mustDo(t, "Savepoint", b.Savepoint(ctx))
		execTx(t, ctx, b, ins, "partition 4 (fails)")
		mustDo(t, "RollbackToSavepoint", b.RollbackToSavepoint(ctx))
		// Rolling back twice to the same savepoint is allowed.
		execTx(t, ctx, b, ins, "partition 4 (fails on retry)")
		mustDo(t, "RollbackToSavepoint", b.RollbackToSavepoint(ctx))
		b.Watermark(slotA, token, 10)
	})
	got := scratchRows(t, ctx, st, scratch)
	want := []string{"before any savepoint", "partition 1", "partition 3"}
	if !slices.Equal(got, want) {
		t.Errorf("scratch rows after commit = %q; want %q", got, want)
	}
	recs, wm := mustLoadWM(t, ctx, st, slotA)
	sortRecords(recs)
	if got := keys(recs); wm != 10 || !slices.Equal(got, []string{"p1", "p3"}) {
		t.Errorf("LoadSlot = %q, watermark %d; want [p1 p3], 10", got, wm)
	}
	for _, r := range recs {
		if revs[r.Key] != r.Revision {
			t.Errorf("record %s revision = %d; Commit returned %d", r.Key, r.Revision, revs[r.Key])
		}
	}
}

// concurrentUpdatesOneWins lets two batches update a record from the same
// revision at the same time, several rounds in a row: exactly one commits,
// the other is fenced, and the record is the winner's.
func (s *suite) concurrentUpdatesOneWins(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	rev := mustCommit(t, ctx, st, func(b projector.Batch) { b.Put(slotA, token, fullRecord("k", 0)) })["k"]
	for round := range 10 {
		recs := [2]projector.Record{fullRecord("k", uint64(2*round+1)), fullRecord("k", uint64(2*round+2))}
		for i := range recs {
			recs[i].Revision = rev
		}
		winner, revs := race(t, ctx, st, round, recs)
		rev = revs["k"]
		if rev <= recs[winner].Revision {
			t.Fatalf("round %d: revision after update = %d; want greater than %d", round, rev, recs[winner].Revision)
		}
		assertRecord(t, mustGet(t, ctx, st, slotA, "k"), recs[winner], rev)
	}
}

// concurrentCreatesOneWins lets two batches create the same record at the
// same time: exactly one commits.
func (s *suite) concurrentCreatesOneWins(t *testing.T) {
	st, ctx := s.setup(t)
	fence(t, ctx, st, slotA, token)
	for round := range 10 {
		key := fmt.Sprintf("k%d", round)
		recs := [2]projector.Record{fullRecord(key, 1), fullRecord(key, 2)}
		winner, revs := race(t, ctx, st, round, recs)
		assertRecord(t, mustGet(t, ctx, st, slotA, key), recs[winner], revs[key])
	}
}

// race commits recs[0] and recs[1] in two batches at once and checks that
// exactly one commits and the other is fenced. It returns the winner.
func race(t *testing.T, ctx context.Context, st projector.StateStore, round int, recs [2]projector.Record) (int, map[string]uint64) {
	t.Helper()
	var batches [2]projector.Batch
	for i := range batches {
		b, err := st.Begin(ctx)
		if err != nil {
			t.Fatalf("Begin: %v", err)
		}
		b.Put(slotA, token, recs[i])
		batches[i] = b
	}
	start := make(chan struct{})
	var errs [2]error
	var revs [2]map[string]uint64
	var wg sync.WaitGroup
	for i := range batches {
		wg.Go(func() {
			<-start
			revs[i], errs[i] = batches[i].Commit(ctx)
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Fatalf("round %d: both batches committed an update from the same revision %d", round, recs[i].Revision)
			}
			winner = i
		case errors.Is(err, projector.ErrFenced):
			assertFenced(t, err, slotA)
		default:
			t.Fatalf("round %d: losing batch failed with %v; want ErrFenced", round, err)
		}
	}
	if winner < 0 {
		t.Fatalf("round %d: neither batch committed: %v", round, errs)
	}
	return winner, revs[winner]
}

// --- helpers ---

var scratchSeq atomic.Int64

// createScratch creates a table through a batch's Tx and returns its name.
func createScratch(t *testing.T, ctx context.Context, st projector.StateStore) string {
	t.Helper()
	name := fmt.Sprintf("storetest_scratch_%d_%d", time.Now().UnixNano(), scratchSeq.Add(1))
	mustCommit(t, ctx, st, func(b projector.Batch) {
		execTx(t, ctx, b, `CREATE TABLE `+name+` (id bigserial PRIMARY KEY, v text NOT NULL)`)
	})
	return name
}

// scratchRows reads the table's values in insertion order.
func scratchRows(t *testing.T, ctx context.Context, st projector.StateStore, name string) []string {
	t.Helper()
	b, err := st.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	defer b.Rollback(ctx)
	rows, err := b.Tx().Query(ctx, `SELECT v FROM `+name+` ORDER BY id`)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return out
}

func execTx(t *testing.T, ctx context.Context, b projector.Batch, sql string, args ...any) {
	t.Helper()
	if b.Tx() == nil {
		t.Fatal("Tx() is nil")
	}
	if _, err := b.Tx().Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func mustDo(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func fence(t *testing.T, ctx context.Context, st projector.StateStore, slot int, token uint64) {
	t.Helper()
	if err := st.Fence(ctx, slot, token); err != nil {
		t.Fatalf("Fence(%d, %d): %v", slot, token, err)
	}
}

// commit runs fill on a new batch and commits it.
func commit(ctx context.Context, st projector.StateStore, fill func(projector.Batch)) (map[string]uint64, error) {
	b, err := st.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("Begin: %w", err)
	}
	fill(b)
	return b.Commit(ctx)
}

func mustCommit(t *testing.T, ctx context.Context, st projector.StateStore, fill func(projector.Batch)) map[string]uint64 {
	t.Helper()
	revs, err := commit(ctx, st, fill)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return revs
}

func mustLoad(t *testing.T, ctx context.Context, st projector.StateStore, slot int) []projector.Record {
	t.Helper()
	recs, _ := mustLoadWM(t, ctx, st, slot)
	return recs
}

// mustLoadWM returns the slot's records sorted by key, and its watermark.
func mustLoadWM(t *testing.T, ctx context.Context, st projector.StateStore, slot int) ([]projector.Record, uint64) {
	t.Helper()
	recs, wm, err := st.LoadSlot(ctx, slot)
	if err != nil {
		t.Fatalf("LoadSlot(%d): %v", slot, err)
	}
	sortRecords(recs)
	return recs, wm
}

func mustGetOrNil(t *testing.T, ctx context.Context, st projector.StateStore, slot int, key string) *projector.Record {
	t.Helper()
	r, err := st.Get(ctx, slot, key)
	if err != nil {
		t.Fatalf("Get(%d, %q): %v", slot, key, err)
	}
	return r
}

func mustGet(t *testing.T, ctx context.Context, st projector.StateStore, slot int, key string) *projector.Record {
	t.Helper()
	r := mustGetOrNil(t, ctx, st, slot, key)
	if r == nil {
		t.Fatalf("Get(%d, %q) = nil; want the record", slot, key)
	}
	return r
}

// assertFenced checks that err is ErrFenced, as a *FencedError naming slot.
func assertFenced(t *testing.T, err error, slot int) {
	t.Helper()
	if !errors.Is(err, projector.ErrFenced) {
		t.Fatalf("error = %v; want one matching projector.ErrFenced", err)
	}
	var fe *projector.FencedError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) is not a *projector.FencedError", err, err)
	}
	if !slices.Contains(fe.Slots, slot) {
		t.Fatalf("FencedError slots = %v; want them to include %d", fe.Slots, slot)
	}
}

var since = time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)

// fullRecord has every field set; Parked and Failing differ in every field.
func fullRecord(key string, seq uint64) projector.Record {
	return projector.Record{
		Key:      key,
		Subject:  contract.EventsPrefix + ".wallet." + strings.ReplaceAll(key, " ", "_"),
		Seq:      seq,
		Position: int64(seq)*10 + 3,
		State:    json.RawMessage(fmt.Sprintf(`{"z": [1, 2.5, "x"], "a": {"seq": %d}, "s": "é\"q"}`, seq)),
		Parked: &projector.Parked{
			Seq: seq + 1, Position: 77, EventType: "MoneyWasWithdrawnFromWallet",
			Error: "negative withdrawal", Attempts: 3, Since: since,
		},
		Behind: true,
		Failing: &projector.Parked{
			Seq: seq + 2, Position: 88, EventType: "WalletOpened",
			Error: "timeout", Attempts: 1, Since: since.Add(time.Minute),
		},
		Skip:    seq + 5,
		Emitted: seq + 4,
		Replay:  seq + 6,
	}
}

// assertRecord compares a stored record with what was put. Updated is set by
// the store; State is compared as a JSON value (a jsonb column normalises
// it).
func assertRecord(t *testing.T, got *projector.Record, want projector.Record, rev uint64) {
	t.Helper()
	if got == nil {
		t.Fatalf("record %q missing", want.Key)
	}
	var diffs []string
	check := func(field string, g, w any, equal bool) {
		if !equal {
			diffs = append(diffs, fmt.Sprintf("%s: got %v, want %v", field, g, w))
		}
	}
	check("Key", got.Key, want.Key, got.Key == want.Key)
	check("Subject", got.Subject, want.Subject, got.Subject == want.Subject)
	check("Seq", got.Seq, want.Seq, got.Seq == want.Seq)
	check("Position", got.Position, want.Position, got.Position == want.Position)
	check("State", string(got.State), string(want.State), jsonEqual(got.State, want.State))
	check("Behind", got.Behind, want.Behind, got.Behind == want.Behind)
	check("Skip", got.Skip, want.Skip, got.Skip == want.Skip)
	check("Emitted", got.Emitted, want.Emitted, got.Emitted == want.Emitted)
	check("Replay", got.Replay, want.Replay, got.Replay == want.Replay)
	check("Parked", fmtParked(got.Parked), fmtParked(want.Parked), parkedEqual(got.Parked, want.Parked))
	check("Failing", fmtParked(got.Failing), fmtParked(want.Failing), parkedEqual(got.Failing, want.Failing))
	check("Revision", got.Revision, rev, got.Revision == rev)
	check("Updated", got.Updated, "set by the store", !got.Updated.IsZero())
	if len(diffs) > 0 {
		t.Errorf("record %q differs:\n  %s", want.Key, strings.Join(diffs, "\n  "))
	}
}

func jsonEqual(a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

func parkedEqual(a, b *projector.Parked) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Seq == b.Seq && a.Position == b.Position && a.EventType == b.EventType &&
		a.Error == b.Error && a.Attempts == b.Attempts && a.Since.Equal(b.Since)
}

func fmtParked(p *projector.Parked) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprintf("%+v", *p)
}

func sortRecords(recs []projector.Record) {
	sort.Slice(recs, func(i, j int) bool { return recs[i].Key < recs[j].Key })
}

func keys(recs []projector.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Key
	}
	return out
}

func ptr[T any](v T) *T { return &v }
