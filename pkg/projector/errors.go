package projector

import (
	"errors"
	"fmt"
)

// ErrNotInline reports a definition that was not marked projection.Inline.
var ErrNotInline = errors.New("projector: projection not marked projection.Inline")

// ErrPartitionStopped reports an append to an aggregate whose partition is
// parked or failing in the asynchronous runner: the inline projection
// would have to apply the event the runner is stuck on first. Retry or
// skip it there (projector retry / skip), then append again.
var ErrPartitionStopped = errors.New("projector: partition parked or failing")

// InlineError is the error of an inline application: the projection, the
// partition and the event it failed on (Position 0 when it failed outside
// a handler: the flush hook, writing the record).
type InlineError struct {
	Projection string
	Partition  string
	Position   int64
	EventType  string
	Err        error
}

func (e *InlineError) Error() string {
	if e.Position == 0 {
		return fmt.Sprintf("projector: inline %s, partition %s: %v", e.Projection, e.Partition, e.Err)
	}
	return fmt.Sprintf("projector: inline %s, partition %s, event %s at position %d: %v", e.Projection, e.Partition, e.EventType, e.Position, e.Err)
}

func (e *InlineError) Unwrap() error { return e.Err }

// ErrUnpublished fails a partition of a KV-state projection whose derived
// events JetStream has refused for too long.
var ErrUnpublished = errors.New("projector: derived events of this partition wait to be published")

// ErrFenced reports that another replica took over a slot: the batch was not
// committed.
var ErrFenced = errors.New("projector: slot taken over by another replica")

// ErrStateNotStored reports a partition whose state the store cannot keep
// (it does not encode, or the store refuses it): the partition fails alone,
// retried and then parked, with the reason.
var ErrStateNotStored = errors.New("projector: state cannot be stored")

// ErrNoOutbox reports a projection that emits with a custom state store
// that can keep no outbox (the built-in stores can).
var ErrNoOutbox = errors.New("projector: Emit needs a store that commits derived events with the state (Postgres outbox or KV record)")

// FencedError names the slots whose commit was refused.
type FencedError struct{ Slots []int }

func (e *FencedError) Error() string {
	return fmt.Sprintf("projector: slots %v taken over by another replica", e.Slots)
}

// Is makes errors.Is(err, ErrFenced) true.
func (e *FencedError) Is(target error) bool { return target == ErrFenced }

// StatementError reports a statement a handler queued (Context.Exec) that
// PostgreSQL refused when the queue was sent.
type StatementError struct {
	SQL string
	Err error
}

func (e *StatementError) Error() string {
	return fmt.Sprintf("projector: queued statement %q: %v", e.SQL, e.Err)
}

func (e *StatementError) Unwrap() error { return e.Err }

// ErrUnknownTenant reports an event whose tenant has no database.
var ErrUnknownTenant = errors.New("projector: unknown tenant")

// Errors of WaitFor.
var (
	// ErrUnknownProjection: the registry has no projection of that name
	// (never initialised, or a typo). Admin's Resume, SetLive and Reset
	// return it too, and create nothing.
	ErrUnknownProjection = errors.New("projector: no such projection")
	// ErrEventNotFound: the event store holds no event at the position
	// (never appended, or its transaction rolled back).
	ErrEventNotFound = errors.New("projector: no event at this position")
	// ErrEventNotInStream: the event is not in the projection's source
	// stream although later events of its aggregate are (dead-lettered by
	// the feeder, or removed by the stream's limits).
	ErrEventNotInStream = errors.New("projector: event not in the projection's source stream")
	// ErrNotWaitable: the projection reads a custom source, which WaitFor
	// cannot follow.
	ErrNotWaitable = errors.New("projector: projection's source cannot be waited for")
	// ErrParked is matched by a *ParkedError.
	ErrParked = errors.New("projector: partition parked")
)

// ParkedError reports that the event waited for belongs to a parked
// partition: the projection will not apply it until an operator retries
// or skips the partition (`projector retry|skip <name> <partition>`).
type ParkedError struct {
	Projection string
	Partition  string
	// Seq and EventType are those of the message the partition failed on;
	// Error is the handler's error.
	Seq       uint64
	EventType string
	Cause     string
}

func (e *ParkedError) Error() string {
	return fmt.Sprintf("projector: %s: partition %s is parked at stream sequence %d (%s: %s); retry or skip it",
		e.Projection, e.Partition, e.Seq, e.EventType, e.Cause)
}

// Is makes errors.Is(err, ErrParked) true.
func (e *ParkedError) Is(target error) bool { return target == ErrParked }
