package projector_test

import (
	"context"
	"encoding/json"

	"github.com/jackc/pgx/v5"

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
