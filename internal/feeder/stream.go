package feeder

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/jsretry"
)

// StreamConfig is the stream the feeder publishes to.
func (c Config) StreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:         c.Stream,
		Description:  "jetproj events fed from eventstore.events by feeder " + c.Name,
		Subjects:     []string{c.SubjectPrefix + ".>"},
		Retention:    jetstream.LimitsPolicy,
		Storage:      jetstream.FileStorage,
		Replicas:     c.StreamReplicas,
		MaxAge:       c.StreamMaxAge,
		Duplicates:   c.DuplicateWindow,
		MaxConsumers: c.MaxConsumers,
		Discard:      jetstream.DiscardOld,
		MaxMsgs:      -1,
		MaxBytes:     -1,
		// Projections read single partitions with direct get.
		AllowDirect: true,
	}
}

// StreamDiff lists the differences between the settings the feeder manages
// and an existing stream's configuration.
func StreamDiff(want, have jetstream.StreamConfig) []string {
	var d []string
	cmp := func(name string, w, h any) {
		if fmt.Sprint(w) != fmt.Sprint(h) {
			d = append(d, fmt.Sprintf("%s: have %v, want %v", name, h, w))
		}
	}
	cmp("subjects", want.Subjects, have.Subjects)
	cmp("replicas", want.Replicas, have.Replicas)
	cmp("max age", want.MaxAge, have.MaxAge)
	cmp("duplicate window", want.Duplicates, have.Duplicates)
	cmp("max consumers", want.MaxConsumers, have.MaxConsumers)
	cmp("storage", want.Storage, have.Storage)
	cmp("retention", want.Retention, have.Retention)
	cmp("allow direct", want.AllowDirect, have.AllowDirect)
	return d
}

// StreamResult tells what EnsureStream did.
type StreamResult struct {
	Created bool
	// Updated lists the differences that were applied.
	Updated []string
}

// EnsureStream creates the feeder's stream, or checks an existing one: a
// difference is applied when c.UpdateStream is set (and reported in the
// result), otherwise it is a *StreamConfigError. Passing JetStream trouble
// (jsretry.Transient) is waited for while ctx lasts.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c Config) (jetstream.Stream, StreamResult, error) {
	want := c.StreamConfig()
	created := false
	// A cluster electing leaders or a node restarting does not answer for
	// a while: wait for it (jsretry) rather than fail the feeder.
	s, err := jsretry.ValueSettling(ctx, "create stream "+want.Name, func(ctx context.Context) (jetstream.Stream, error) {
		s, err := js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			s, err = js.CreateStream(ctx, want)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return js.Stream(ctx, want.Name) // another instance created it first
			}
			created = err == nil
		}
		return s, err
	})
	if created {
		return s, StreamResult{Created: true}, nil
	}
	if err != nil {
		return nil, StreamResult{}, fmt.Errorf("feeder: stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	diff := StreamDiff(want, have)
	if len(diff) == 0 {
		return s, StreamResult{}, nil
	}
	if !c.UpdateStream {
		return nil, StreamResult{}, &StreamConfigError{Stream: want.Name, Differences: diff}
	}
	// Keep what the feeder does not manage as the operator set it.
	upd := have
	upd.Subjects, upd.Replicas, upd.MaxAge = want.Subjects, want.Replicas, want.MaxAge
	upd.Duplicates, upd.MaxConsumers, upd.AllowDirect = want.Duplicates, want.MaxConsumers, want.AllowDirect
	if have.Storage != want.Storage || have.Retention != want.Retention {
		return nil, StreamResult{}, fmt.Errorf("feeder: stream %s: storage and retention cannot be changed in place (%s)", want.Name, strings.Join(diff, "; "))
	}
	s, err = jsretry.ValueSettling(ctx, "update stream "+want.Name, func(ctx context.Context) (jetstream.Stream, error) {
		return js.UpdateStream(ctx, upd)
	})
	if err != nil {
		return nil, StreamResult{}, fmt.Errorf("feeder: update stream %s: %w", want.Name, err)
	}
	return s, StreamResult{Updated: diff}, nil
}
