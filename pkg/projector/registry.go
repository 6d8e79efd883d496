package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/pkg/contract"
)

// The registry is KV bucket contract.RegistryBucket: every projection's
// lifecycle state, one Entry per projection, keyed by its name.

// Lifecycle states.
const (
	StateActive  = "active"
	StatePaused  = "paused"  // replicas give their slots back and wait
	StateDeleted = "deleted" // replicas do not run it until it is initialised again
)

// Entry is a projection's registry entry.
type Entry struct {
	Name       string `json:"name"`
	State      string `json:"state"`
	Generation int    `json:"generation"`
	Kind       string `json:"kind"`
	Slots      int    `json:"slots"`
	Store      string `json:"store"`
	Reason     string `json:"reason,omitempty"`
	// ReplayUntil is the source sequence up to which the projection is
	// replaying (after a reset or rebuild): nothing derived from those
	// messages is emitted.
	ReplayUntil uint64 `json:"replay_until,omitempty"`
	// NotLive marks a deployment that must not emit (blue-green: v2
	// catching up beside v1).
	NotLive bool `json:"not_live,omitempty"`
	// LivePending marks a switch to live in progress: SetLive has turned
	// NotLive off and is reading the source's end for ReplayUntil.
	// Replicas wait for it before deciding what a batch emits.
	LivePending bool      `json:"live_pending,omitempty"`
	Updated     time.Time `json:"updated"`
	Revision    uint64    `json:"-"`
}

// Registry reads and changes registry entries; a watch keeps a local copy
// current.
type Registry struct {
	kv jetstream.KeyValue
	mu sync.RWMutex
	m  map[string]Entry
}

// OpenRegistry creates the bucket if needed, waiting through passing
// JetStream trouble (jsretry) while ctx lasts.
func OpenRegistry(ctx context.Context, js jetstream.JetStream, replicas int) (*Registry, error) {
	cfg := jetstream.KeyValueConfig{
		Bucket: contract.RegistryBucket, History: 5, Replicas: max(replicas, 1), Storage: jetstream.FileStorage,
		Description: "jetproj projections and their lifecycle state",
	}
	kv, err := jsretry.ValueSettling(ctx, "open registry "+contract.RegistryBucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.CreateOrUpdateKeyValue(ctx, cfg)
	})
	if err != nil {
		return nil, fmt.Errorf("projector: registry: %w", err)
	}
	return &Registry{kv: kv, m: map[string]Entry{}}, nil
}

// Watch keeps the local copy current until ctx ends. Starting the watch
// waits through passing JetStream trouble (jsretry) while ctx lasts.
func (g *Registry) Watch(ctx context.Context) error {
	w, err := jsretry.ValueSettling(ctx, "watch registry "+contract.RegistryBucket, func(ctx context.Context) (jetstream.KeyWatcher, error) {
		return g.kv.WatchAll(ctx)
	})
	if err != nil {
		return fmt.Errorf("projector: registry: %w", err)
	}
	go func() {
		defer w.Stop() //nolint:errcheck
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					continue
				}
				var en Entry
				if e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &en) != nil {
					continue
				}
				en.Revision = e.Revision()
				g.remember(e.Key(), en)
			}
		}
	}()
	return nil
}

// remember keeps en as the local copy of name's entry unless the copy is
// newer already: Run seeds the copy with what it read, which the watch may
// deliver again later.
func (g *Registry) remember(name string, en Entry) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if cur, ok := g.m[name]; !ok || cur.Revision <= en.Revision {
		g.m[name] = en
	}
}

func (g *Registry) paused(name string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	e, ok := g.m[name]
	return ok && e.State != StateActive
}

func (g *Registry) cached(name string) (Entry, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	e, ok := g.m[name]
	return e, ok
}

// Get reads an entry from the server; ok is false when there is none.
func (g *Registry) Get(ctx context.Context, name string) (Entry, bool, error) {
	e, err := g.kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, err
	}
	var en Entry
	if err := json.Unmarshal(e.Value(), &en); err != nil {
		return Entry{}, false, fmt.Errorf("projector: registry entry %s: %w", name, err)
	}
	en.Revision = e.Revision()
	return en, true, nil
}

// List reads every entry.
func (g *Registry) List(ctx context.Context) ([]Entry, error) {
	lister, err := g.kv.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, err
	}
	var out []Entry
	for k := range lister.Keys() {
		e, ok, err := g.Get(ctx, k)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, e)
		}
	}
	return out, nil
}

// Update changes an entry with compare-and-set, creating it when absent.
func (g *Registry) Update(ctx context.Context, name string, change func(e *Entry, exists bool) error) (Entry, error) {
	for range 20 {
		e, ok, err := g.Get(ctx, name)
		if err != nil {
			return Entry{}, err
		}
		if !ok {
			e = Entry{Name: name}
		}
		if err := change(&e, ok); err != nil {
			return Entry{}, err
		}
		e.Updated = time.Now().UTC()
		b, _ := json.Marshal(e)
		if ok {
			_, err = g.kv.Update(ctx, name, b, e.Revision)
		} else {
			_, err = g.kv.Create(ctx, name, b)
		}
		if err == nil {
			g.mu.Lock()
			g.m[name] = e
			g.mu.Unlock()
			return e, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return Entry{}, err
		}
	}
	return Entry{}, fmt.Errorf("projector: registry entry %s: too much contention", name)
}
