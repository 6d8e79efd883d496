package lease

import (
	"errors"
	"fmt"
	"time"
)

// ConfigMismatchError is returned by EnsureBucket when the bucket already
// exists with a TTL other than the one asked for. Using it anyway would make
// holders fence themselves on the wrong schedule, so the caller has to decide
// (change the configuration, or edit or delete the bucket).
type ConfigMismatchError struct {
	Bucket  string
	WantTTL time.Duration
	GotTTL  time.Duration
}

func (e *ConfigMismatchError) Error() string {
	return fmt.Sprintf("lease: bucket %q exists with TTL %v, want %v", e.Bucket, e.GotTTL, e.WantTTL)
}

var (
	// ErrHeld means the key is held by a live lease of another holder.
	// Errors returned by Acquire that match it are *HeldError values.
	ErrHeld = errors.New("lease: held by another holder")

	// ErrLost means the lease is no longer ours: it expired, somebody else
	// took it over, or it was released. Renewing or releasing it again
	// returns ErrLost without asking the server.
	ErrLost = errors.New("lease: lost")
)

// HeldError describes the live lease that made Acquire fail. It matches
// ErrHeld with errors.Is.
type HeldError struct {
	Key string
	// Holder is the name the current holder gave to Acquire; empty if the
	// entry is not a lease written by this package, or if the key changed
	// hands several times while Acquire was looking at it.
	Holder string
	// Revision is the current holder's fencing token.
	Revision uint64
	// AcquiredAt is when the current holder acquired the lease, by its clock.
	AcquiredAt time.Time
}

func (e *HeldError) Error() string {
	if e.Holder == "" {
		return fmt.Sprintf("lease: key %q is held (revision %d)", e.Key, e.Revision)
	}
	return fmt.Sprintf("lease: key %q is held by %q (revision %d)", e.Key, e.Holder, e.Revision)
}

// Is reports whether target is ErrHeld.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }
