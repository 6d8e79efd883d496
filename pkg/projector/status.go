package projector

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
)

// Status describes a projection across all replicas, as `projector status`
// shows it.
type Status struct {
	Name       string `json:"name"`
	Kind       string `json:"kind"`
	State      string `json:"state"`
	Store      string `json:"store"`
	Generation int    `json:"generation"`
	Partitions int    `json:"partitions"`
	// Position is the lowest slot watermark: every message up to it is
	// handled (failing partitions aside).
	Position uint64 `json:"position"`
	// Head is the source stream's last sequence; Lag = Head - Position.
	Head uint64 `json:"head"`
	Lag  uint64 `json:"lag"`
	// Owners maps replica names to the number of slots they hold.
	Owners map[string]int `json:"owners"`
	Slots  int            `json:"slots"`
	Parked []Record       `json:"parked,omitempty"`
}

// Status reports on a projection from the registry, its leases, its state
// store and its source stream. It creates and changes no bucket or stream;
// a PostgreSQL store's tables are brought to the current schema first.
// Head is the source stream's last sequence (`projector status` shows the
// last message on the projection's own subjects instead).
func (a *Admin) Status(ctx context.Context, p projection.Definer) (Status, error) {
	d, js := p.Def(), a.js
	spec := projectionspec.Of(d)
	st := Status{Name: d.Name(), Kind: spec.Kind().String(), Slots: spec.Settings().Slots, Owners: map[string]int{}, State: "not initialised"}
	kv, err := js.KeyValue(ctx, contract.RegistryBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return st, nil // no projection was ever initialised here
	}
	if err != nil {
		return st, fmt.Errorf("projector: registry: %w", err)
	}
	reg := &Registry{kv: kv, m: map[string]Entry{}}
	if e, ok, err := reg.Get(ctx, d.Name()); err != nil {
		return st, err
	} else if ok {
		st.State, st.Generation, st.Store = e.State, e.Generation, e.Store
	}
	if s, err := js.Stream(ctx, spec.SourceConfig().Stream); err == nil {
		st.Head = s.CachedInfo().State.LastSeq
	}
	if kv, err := js.KeyValue(ctx, contract.LeaseBucket(d.Name())); err == nil {
		if lister, err := kv.ListKeys(ctx); err == nil {
			for k := range lister.Keys() {
				if !strings.HasPrefix(k, "s.") {
					continue
				}
				if e, err := kv.Get(ctx, k); err == nil {
					st.Owners[holderOf(e.Value())]++
				}
			}
		}
	}
	store := StoreFor(js, d, a.replicas)
	if st.State == "not initialised" {
		return st, nil
	}
	if _, kv := store.(*KVStore); !kv {
		// Tables written by an older projector gain the columns status
		// reads (idempotent, a read when current). KV buckets are only
		// looked up: creating one would also change its settings.
		if err := store.Init(ctx); err != nil {
			return st, err
		}
	}
	parked, n, err := store.Summary(ctx)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		// Initialised, its state not stored yet: position 0.
	case err != nil:
		return st, err
	default:
		st.Parked, st.Partitions = parked, n
		first := true
		for slot := range spec.Settings().Slots {
			_, wm, err := loadWatermark(ctx, store, slot)
			if err != nil {
				return st, err
			}
			if first || wm < st.Position {
				st.Position, first = wm, false
			}
		}
	}
	if st.Head > st.Position {
		st.Lag = st.Head - st.Position
	}
	return st, nil
}

// loadWatermark reads a slot's watermark without its records when the
// store can.
func loadWatermark(ctx context.Context, s StateStore, slot int) (int, uint64, error) {
	if w, ok := s.(interface {
		Watermark(ctx context.Context, slot int) (uint64, error)
	}); ok {
		wm, err := w.Watermark(ctx, slot)
		return 0, wm, err
	}
	recs, wm, err := s.LoadSlot(ctx, slot)
	return len(recs), wm, err
}

func holderOf(v []byte) string {
	// The lease value is JSON with a "holder" field.
	s := string(v)
	i := strings.Index(s, `"holder":"`)
	if i < 0 {
		return "?"
	}
	s = s[i+len(`"holder":"`):]
	if j := strings.IndexByte(s, '"'); j >= 0 {
		return s[:j]
	}
	return "?"
}
