package projector_test

import (
	"encoding/json"

	"github.com/jackc/pgx/v5"
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
