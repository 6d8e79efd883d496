// Package memorybucket warns about a KV bucket that an earlier version
// created in memory on several replicas. The services' status and the
// replicas' progress buckets are kept on file since 2026-12-06: a
// replicated stream in memory loses its copy on every node that restarts,
// and a cluster whose nodes restart one after the other can then lose the
// last full copy with its leader and stay without a leader for good. An
// existing bucket keeps its storage (JetStream cannot change it), so the
// services say how to move it: delete it, and they create it again.
package memorybucket

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/contract"
)

// Warn logs a warning when bucket is kept in memory on more than one
// replica, and reports whether it did. A bucket it cannot read is left to
// the caller's own errors.
func Warn(ctx context.Context, js jetstream.JetStream, bucket string, log *slog.Logger) bool {
	s, err := js.Stream(ctx, contract.KVStream(bucket))
	if err != nil {
		return false
	}
	c := s.CachedInfo().Config
	if c.Storage != jetstream.MemoryStorage || c.Replicas < 2 {
		return false
	}
	log.Warn("KV bucket kept in memory on several replicas: rolling restarts of the NATS cluster can leave it without a leader for good; "+
		"delete it once (nats kv rm "+bucket+") and the services create it again on file",
		"bucket", bucket, "replicas", c.Replicas)
	return true
}
