package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/jsretry"
)

// MinTTL is the shortest bucket TTL EnsureBucket accepts. The server checks
// for expired messages about four times a second and keeps expiry markers
// for at least a second.
const MinTTL = time.Second

// EnsureBucket creates the KV bucket that holds leases, or opens it if it
// already exists with the same TTL. It is idempotent.
//
// ttl is the lease lifetime: the bucket's MaxAge, so a lease that is not
// renewed within ttl of its last write disappears. It must be at least MinTTL.
// The bucket keeps one revision per key and leaves an expiry marker when a
// lease ages out, so that watchers (standbys in Run) see the expiry at once.
// replicas is the bucket's replica count (0 means 1).
//
// Transient JetStream errors (see jsretry.Transient) are retried while ctx
// lasts, with ctx's jsretry.Retrier.
//
// If the bucket exists with another TTL, EnsureBucket returns a
// *ConfigMismatchError. Other differences (replicas, history, markers) are
// accepted: they do not change when a lease expires.
func EnsureBucket(ctx context.Context, js jetstream.JetStream, bucket string, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	if ttl < MinTTL {
		return nil, fmt.Errorf("lease: bucket %q: TTL %v is shorter than %v", bucket, ttl, MinTTL)
	}
	if replicas < 0 {
		return nil, fmt.Errorf("lease: bucket %q: replicas %d is negative", bucket, replicas)
	}
	cfg := jetstream.KeyValueConfig{
		Bucket:         bucket,
		Description:    "jetproj leases",
		History:        1,
		TTL:            ttl,
		Storage:        jetstream.FileStorage,
		Replicas:       replicas,
		LimitMarkerTTL: ttl,
	}
	// A cluster electing leaders, or a node restarting, does not answer
	// for a while: wait for it (jsretry) rather than fail the service.
	kv, err := jsretry.ValueSettling(ctx, "create lease bucket "+bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		kv, err := js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			return js.KeyValue(ctx, bucket)
		}
		return kv, err
	})
	if err != nil {
		return nil, fmt.Errorf("lease: create bucket %q: %w", bucket, err)
	}
	got, err := BucketTTL(ctx, kv)
	if err != nil {
		return nil, err
	}
	if got != ttl {
		return nil, &ConfigMismatchError{Bucket: bucket, WantTTL: ttl, GotTTL: got}
	}
	return kv, nil
}

// BucketTTL reads the bucket's TTL (its MaxAge) from the server, waiting
// through transient errors while ctx lasts. It fails if the bucket has none,
// since leases in it would never expire.
func BucketTTL(ctx context.Context, kv jetstream.KeyValue) (time.Duration, error) {
	st, err := jsretry.ValueSettling(ctx, "lease bucket "+kv.Bucket()+" status", kv.Status)
	if err != nil {
		return 0, fmt.Errorf("lease: bucket %q status: %w", kv.Bucket(), err)
	}
	if st.TTL() <= 0 {
		return 0, fmt.Errorf("lease: bucket %q has no TTL: leases in it would never expire", kv.Bucket())
	}
	return st.TTL(), nil
}
