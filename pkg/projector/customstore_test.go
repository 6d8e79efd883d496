package projector_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
	"github.com/jetproj/jetproj/pkg/projector/storetest"
)

// auditedStore is a StateStore defined outside package projector, as a
// user would write one: it keeps the records in PostgreSQL through a
// PGStore and counts the batches it commits. It reports its capabilities
// itself.
type auditedStore struct {
	inner   *projector.PGStore
	commits *atomic.Int64
}

var _ projector.CapableStore = auditedStore{}

func (s auditedStore) Init(ctx context.Context) error { return s.inner.Init(ctx) }
func (s auditedStore) LoadSlot(ctx context.Context, slot int) ([]projector.Record, uint64, error) {
	return s.inner.LoadSlot(ctx, slot)
}
func (s auditedStore) Fence(ctx context.Context, slot int, token uint64) error {
	return s.inner.Fence(ctx, slot, token)
}
func (s auditedStore) Reset(ctx context.Context) error { return s.inner.Reset(ctx) }
func (s auditedStore) Get(ctx context.Context, slot int, key string) (*projector.Record, error) {
	return s.inner.Get(ctx, slot, key)
}
func (s auditedStore) Summary(ctx context.Context) ([]projector.Record, int, error) {
	return s.inner.Summary(ctx)
}
func (s auditedStore) Capabilities() projector.Capabilities {
	return projector.Capabilities{Transactional: true}
}

func (s auditedStore) Begin(ctx context.Context) (projector.Batch, error) {
	b, err := s.inner.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &auditedBatch{QueueBatch: b.(projector.QueueBatch), commits: s.commits}, nil
}

// auditedBatch counts commits; Queue (Context.Exec) and the rest are the
// PostgreSQL batch's.
type auditedBatch struct {
	projector.QueueBatch
	commits *atomic.Int64
}

func (b *auditedBatch) Commit(ctx context.Context) (map[string]uint64, error) {
	revs, err := b.QueueBatch.Commit(ctx)
	if err == nil {
		b.commits.Add(1)
	}
	return revs, err
}

// TestCustomStoreSuite: a store defined outside the package passes the
// StateStore suite.
func TestCustomStoreSuite(t *testing.T) {
	t.Parallel()
	pool := devtest.Pool(t)
	storetest.Run(t, func(t *testing.T) projector.StateStore {
		return auditedStore{inner: projector.NewPGStore(pool, uniqueName(t)), commits: new(atomic.Int64)}
	}, storetest.Options{Transactional: true, TokensFenceCommits: true})
}

// TestCustomStoreRunsAProjection plugs the custom store into a projection
// with projection.CustomStore and runs it end to end: the state equals the
// fold and the store committed the batches.
func TestCustomStoreRunsAProjection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	pool := devtest.Pool(t)
	st := auditedStore{inner: projector.NewPGStore(pool, "audited"), commits: new(atomic.Int64)}
	b.publishWallets(t, 50, 3)
	b.run(t, "r1", walletBalance("audited", projection.CustomStore(st)))
	devtest.Eventually(t, 30*time.Second, func() error {
		for k, want := range b.foldCopy() {
			rec, err := st.Get(ctx, 0, k)
			if err != nil || rec == nil {
				return fmt.Errorf("%s: no record (%v)", k, err)
			}
			var got Balance
			if err := jsonUnmarshal(rec.State, &got); err != nil || got != want {
				return fmt.Errorf("%s: %+v, want %+v", k, got, want)
			}
		}
		return nil
	})
	if st.commits.Load() == 0 {
		t.Fatal("the custom store committed nothing: the projection did not use it")
	}
	// Something that is not a StateStore is refused when the projector is
	// built, with the projection's name.
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, err = projector.New(nc, projector.Options{}, walletBalance("not_a_store", projection.CustomStore(42)))
	if err == nil || !strings.Contains(err.Error(), `"not_a_store"`) {
		t.Fatalf("a CustomStore that is no StateStore: %v", err)
	}
}

// foldCopy is a copy of the fold.
func (b *bundle) foldCopy() map[string]Balance {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]Balance, len(b.fold))
	for k, v := range b.fold {
		out[k] = v
	}
	return out
}
