package eventstore

import (
	"errors"
	"fmt"
)

// ErrVersionConflict is matched by errors.Is on a *VersionConflictError.
var ErrVersionConflict = errors.New("eventstore: version conflict")

// ErrInvalidEvent reports an event that cannot be stored.
var ErrInvalidEvent = errors.New("eventstore: invalid event")

// VersionConflictError reports that an aggregate was not at the version the
// appender expected: someone else appended first.
type VersionConflictError struct {
	AggregateType string
	AggregateID   string
	Expected      int64
	Actual        int64
}

func (e *VersionConflictError) Error() string {
	return fmt.Sprintf("eventstore: version conflict on %s %q: expected version %d, actual %d",
		e.AggregateType, e.AggregateID, e.Expected, e.Actual)
}

// Is makes errors.Is(err, ErrVersionConflict) true.
func (e *VersionConflictError) Is(target error) bool { return target == ErrVersionConflict }

// ErrInlineProjection is matched by the error of an append that an inline
// projection refused (a handler error, a read-model write PostgreSQL
// refused): nothing was stored. The projection's own error is wrapped too.
var ErrInlineProjection = errors.New("eventstore: inline projection failed")
