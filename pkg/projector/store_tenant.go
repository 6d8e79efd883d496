package projector

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TenantStore keeps each tenant's partitions in that tenant's database
// (a PGStore per tenant). A batch opens one transaction per tenant it
// touches; each partition's writes, position and state commit atomically in
// its tenant's database. Slot watermarks live in the first tenant's
// database and commit last, after every other tenant committed, so a crash
// between commits never moves a watermark past unapplied messages.
type TenantStore struct {
	tenants []string
	stores  map[string]*PGStore
}

var _ StateStore = (*TenantStore)(nil)

// Capabilities implements CapableStore.
func (s *TenantStore) Capabilities() Capabilities { return Capabilities{Transactional: true} }

// NewTenantStore returns a store over the tenants' pools.
func NewTenantStore(pools map[string]*pgxpool.Pool, projection string) *TenantStore {
	s := &TenantStore{stores: map[string]*PGStore{}}
	for t, p := range pools {
		s.tenants = append(s.tenants, t)
		s.stores[t] = NewPGStore(p, projection)
	}
	slices.Sort(s.tenants)
	return s
}

func (s *TenantStore) primary() *PGStore { return s.stores[s.tenants[0]] }

// Init initialises every tenant's tables.
func (s *TenantStore) Init(ctx context.Context) error {
	for _, t := range s.tenants {
		if err := s.stores[t].Init(ctx); err != nil {
			return fmt.Errorf("tenant %s: %w", t, err)
		}
	}
	return nil
}

// LoadSlot merges the tenants' records; the watermark is the primary's.
func (s *TenantStore) LoadSlot(ctx context.Context, slot int) ([]Record, uint64, error) {
	var all []Record
	var wm uint64
	for i, t := range s.tenants {
		recs, w, err := s.stores[t].LoadSlot(ctx, slot)
		if err != nil {
			return nil, 0, fmt.Errorf("tenant %s: %w", t, err)
		}
		for j := range recs {
			if recs[j].Tenant == "" {
				recs[j].Tenant = t // written before records named their tenant
			}
		}
		all = append(all, recs...)
		if i == 0 {
			wm = w
		}
	}
	return all, wm, nil
}

// Fence fences the slot in every tenant's database.
func (s *TenantStore) Fence(ctx context.Context, slot int, token uint64) error {
	for _, t := range s.tenants {
		if err := s.stores[t].Fence(ctx, slot, token); err != nil {
			return err
		}
	}
	return nil
}

// Get looks the partition up in every tenant's database.
func (s *TenantStore) Get(ctx context.Context, slot int, key string) (*Record, error) {
	for _, t := range s.tenants {
		r, err := s.stores[t].Get(ctx, slot, key)
		if err != nil {
			return nil, err
		}
		if r != nil {
			if r.Tenant == "" {
				r.Tenant = t
			}
			return r, nil
		}
	}
	return nil, nil
}

// Reset resets every tenant.
func (s *TenantStore) Reset(ctx context.Context) error {
	for _, t := range s.tenants {
		if err := s.stores[t].Reset(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Delete deletes the projection's records in every tenant.
func (s *TenantStore) Delete(ctx context.Context) error {
	for _, t := range s.tenants {
		if err := s.stores[t].Delete(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Summary merges the tenants' summaries.
func (s *TenantStore) Summary(ctx context.Context) ([]Record, int, error) {
	var parked []Record
	n := 0
	for _, t := range s.tenants {
		p, c, err := s.stores[t].Summary(ctx)
		if err != nil {
			return nil, 0, err
		}
		parked, n = append(parked, p...), n+c
	}
	return parked, n, nil
}

// Watermark reads the primary's watermark.
func (s *TenantStore) Watermark(ctx context.Context, slot int) (uint64, error) {
	return s.primary().Watermark(ctx, slot)
}

type tenantBatch struct {
	s       *TenantStore
	batches map[string]*pgBatch
	cur     *pgBatch
	marks   map[int][2]uint64
	err     error
}

// Begin starts a batch; transactions open as tenants are used.
func (s *TenantStore) Begin(context.Context) (Batch, error) {
	return &tenantBatch{s: s, batches: map[string]*pgBatch{}, marks: map[int][2]uint64{}}, nil
}

// Use selects the tenant whose transaction the next writes go to.
func (b *tenantBatch) Use(ctx context.Context, tenant string) error {
	st, ok := b.s.stores[tenant]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownTenant, tenant)
	}
	if pb, ok := b.batches[tenant]; ok {
		b.cur = pb
		return nil
	}
	bt, err := st.Begin(ctx)
	if err != nil {
		return err
	}
	b.batches[tenant] = bt.(*pgBatch)
	b.cur = b.batches[tenant]
	return nil
}

func (b *tenantBatch) Tx() pgx.Tx {
	if b.cur == nil {
		return nil
	}
	return b.cur.Tx()
}

var _ RecordChecker = (*TenantStore)(nil)

// CheckRecord refuses a state that jsonb refuses.
func (s *TenantStore) CheckRecord(r Record) error { return checkJSONB(r) }

// Queue queues a handler's statement in the current tenant's transaction.
func (b *tenantBatch) Queue(sql string, args ...any) {
	if b.cur != nil {
		b.cur.Queue(sql, args...)
	}
}

// SendQueued sends the current tenant's queued statements now.
func (b *tenantBatch) SendQueued(ctx context.Context) error {
	if b.cur == nil {
		return nil
	}
	return b.cur.SendQueued(ctx)
}

func (b *tenantBatch) Savepoint(ctx context.Context) error {
	if b.cur == nil {
		return nil
	}
	return b.cur.Savepoint(ctx)
}

func (b *tenantBatch) RollbackToSavepoint(ctx context.Context) error {
	if b.cur == nil {
		return nil
	}
	return b.cur.RollbackToSavepoint(ctx)
}

// Put stores the record in its tenant's database; a partition whose tenant
// is missing or unknown (it is failing for that reason) is recorded in the
// first tenant's database.
func (b *tenantBatch) Put(slot int, token uint64, r Record) {
	t := r.Tenant
	if _, ok := b.s.stores[t]; !ok {
		t = b.s.tenants[0]
	}
	if b.batches[t] == nil {
		cur := b.cur
		if err := b.Use(context.Background(), t); err != nil {
			b.err = err
			return
		}
		b.cur = cur
	}
	b.batches[t].Put(slot, token, r)
}

// Emit stores derived events in the current tenant's outbox.
func (b *tenantBatch) Emit(ctx context.Context, entries []OutboxEntry) error {
	if b.cur == nil {
		return ErrUnknownTenant
	}
	return b.cur.Emit(ctx, entries)
}

func (b *tenantBatch) Watermark(slot int, token, seq uint64) { b.marks[slot] = [2]uint64{token, seq} }

func (b *tenantBatch) Rollback(ctx context.Context) {
	for _, pb := range b.batches {
		pb.Rollback(ctx)
	}
}

// Commit commits every tenant's transaction, the primary's (with the
// watermarks) last.
func (b *tenantBatch) Commit(ctx context.Context) (map[string]uint64, error) {
	if b.err != nil {
		b.Rollback(ctx)
		return nil, b.err
	}
	if len(b.marks) > 0 {
		if _, ok := b.batches[b.s.tenants[0]]; !ok {
			if err := b.Use(ctx, b.s.tenants[0]); err != nil {
				b.Rollback(ctx)
				return nil, err
			}
		}
		for slot, m := range b.marks {
			b.batches[b.s.tenants[0]].Watermark(slot, m[0], m[1])
		}
	}
	revs := map[string]uint64{}
	order := make([]string, 0, len(b.batches))
	for t := range b.batches {
		if t != b.s.tenants[0] {
			order = append(order, t)
		}
	}
	slices.Sort(order)
	if _, ok := b.batches[b.s.tenants[0]]; ok {
		order = append(order, b.s.tenants[0])
	}
	// Check every tenant's fence tokens and write everywhere first: the token
	// rows stay locked until commit, so a new owner cannot fence between the
	// commits below and the batch commits in every tenant or in none.
	for _, t := range order {
		r, err := b.batches[t].prepare(ctx)
		if err != nil {
			b.Rollback(ctx)
			return nil, fmt.Errorf("tenant %s: %w", t, err)
		}
		for k, v := range r {
			revs[k] = v
		}
	}
	for i, t := range order {
		if err := b.batches[t].lazy.Commit(ctx); err != nil {
			for _, rest := range order[i+1:] {
				b.batches[rest].Rollback(ctx)
			}
			return nil, fmt.Errorf("tenant %s: commit: %w", t, err)
		}
	}
	return revs, nil
}
