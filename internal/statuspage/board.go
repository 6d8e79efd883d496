package statuspage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/memorybucket"
	"github.com/jetproj/jetproj/pkg/contract"
)

// The bucket every service publishes its status to is
// contract.StatusBucket. Its entries expire when their service stops
// publishing. It is kept on file, not in memory: a replicated stream in
// memory loses its copy on every node that restarts, and a cluster whose
// nodes restart one after the other can then lose the last full copy with
// its leader and stay without a leader for good (seen in
// TestClusterNodeRestartsAndLeaderKills).

// minTTL is the bucket's shortest time to live; longer intervals get a TTL
// of ttlIntervals intervals.
const (
	minTTL       = 30 * time.Second
	ttlIntervals = 6
)

// board reads and writes the bucket, creating it on first use.
type board struct {
	js       jetstream.JetStream
	replicas int
	ttl      time.Duration
	log      *slog.Logger

	mu sync.Mutex
	kv jetstream.KeyValue
}

func newBoard(js jetstream.JetStream, replicas int, interval time.Duration, log *slog.Logger) *board {
	return &board{js: js, replicas: max(replicas, 1), ttl: max(minTTL, ttlIntervals*interval), log: log}
}

// bucket returns the bucket, creating it when create is set; nil (and no
// error) when it does not exist and create is not set.
func (b *board) bucket(ctx context.Context, create bool) (jetstream.KeyValue, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.kv != nil {
		return b.kv, nil
	}
	kv, err := b.js.KeyValue(ctx, contract.StatusBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) && create {
		kv, err = b.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: contract.StatusBucket, History: 1, TTL: b.ttl, Storage: jetstream.FileStorage, Replicas: b.replicas,
			Description: "jetproj services' status, for their status pages",
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = b.js.KeyValue(ctx, contract.StatusBucket)
		}
	}
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("statuspage: bucket %s: %w", contract.StatusBucket, err)
	}
	memorybucket.Warn(ctx, b.js, contract.StatusBucket, b.log) // once: kv is kept
	b.kv = kv
	return kv, nil
}

func (b *board) put(ctx context.Context, key string, value []byte) error {
	kv, err := b.bucket(ctx, true)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, key, value)
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		// Deleted (or lost with a memory-only server): made again next time.
		b.mu.Lock()
		b.kv = nil
		b.mu.Unlock()
	}
	return err
}

// entry is one key's value and when it was written.
type entry struct {
	value   []byte
	created time.Time
}

// readAll returns every key's value; empty while the bucket does not exist.
func (b *board) readAll(ctx context.Context) (map[string]entry, error) {
	kv, err := b.bucket(ctx, false)
	if kv == nil || err != nil {
		return nil, err
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]entry{}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			return out, err
		}
		out[k] = entry{value: e.Value(), created: e.Created()}
	}
	return out, nil
}

// age is how long ago key was written; ok is false when it is absent.
func (b *board) age(ctx context.Context, key string) (time.Duration, bool, error) {
	kv, err := b.bucket(ctx, false)
	if kv == nil || err != nil {
		return 0, false, err
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return time.Since(e.Created()), true, nil
}

// Key joins parts into a KV key, each part's characters that a key cannot
// hold replaced by '_'.
func Key(parts ...string) string {
	for i, p := range parts {
		parts[i] = strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '=':
				return r
			}
			return '_'
		}, p)
		if parts[i] == "" {
			parts[i] = "_"
		}
	}
	return strings.Join(parts, ".")
}
