package feeder

import (
	"errors"
	"fmt"
	"strings"
)

// ErrOversized is matched by an *OversizedError.
var ErrOversized = errors.New("feeder: event larger than the server's max payload or the stream's max_msg_size")

// OversizedError reports an event larger than the server's max payload, or
// one the stream refused for its max_msg_size (MaxMsgSize set).
type OversizedError Oversized

func (e *OversizedError) Error() string {
	if e.MaxMsgSize > 0 {
		return fmt.Sprintf("feeder: event %d (%s of %s %q) is %d bytes, more than stream %s's max_msg_size of %d bytes",
			e.Position, e.EventType, e.AggregateType, e.AggregateID, e.Size, e.Stream, e.MaxMsgSize)
	}
	return fmt.Sprintf("feeder: event %d (%s of %s %q) is %d bytes, more than the server's max payload of %d bytes",
		e.Position, e.EventType, e.AggregateType, e.AggregateID, e.Size, e.MaxPayload)
}

// Is makes errors.Is(err, ErrOversized) true.
func (e *OversizedError) Is(target error) bool { return target == ErrOversized }

// ErrStreamConfig is matched by a *StreamConfigError.
var ErrStreamConfig = errors.New("feeder: stream configuration differs")

// StreamConfigError reports how an existing stream differs from the
// configuration when the feeder was not told to update it.
type StreamConfigError struct {
	Stream      string
	Differences []string
}

func (e *StreamConfigError) Error() string {
	return fmt.Sprintf("feeder: stream %s exists with a different configuration (set FEEDER_STREAM_UPDATE=true to apply): %s",
		e.Stream, strings.Join(e.Differences, "; "))
}

// Is makes errors.Is(err, ErrStreamConfig) true.
func (e *StreamConfigError) Is(target error) bool { return target == ErrStreamConfig }
