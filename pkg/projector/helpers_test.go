package projector_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projection"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

type projectionTx = pgx.Tx

func slotsOf(r *running) []int {
	st := r.p.Statuses()
	if len(st) == 0 {
		return nil
	}
	return st[0].Slots
}

// projectorInit initialises a projection before replicas run it, as
// `projector init` does.
func projectorInit(ctx context.Context, b *bundle, d projection.Definer) error {
	return b.admin().Init(ctx, d)
}

// newPool is a pool on a database of the test's own, closed at its end.
func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), devtest.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
