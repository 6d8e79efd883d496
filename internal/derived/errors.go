package derived

import (
	"errors"
	"fmt"
)

// ErrNotLinkStream reports a LinkTo whose stream exists and was not created
// for links (EVENTS, a projection's own stream, another team's stream):
// jetproj never changes such a stream.
var ErrNotLinkStream = errors.New("stream exists and is not a jetproj linked stream")

// ErrUnexpectedDuplicate reports a derived event that JetStream
// acknowledged as a duplicate of a message that is not that event (an
// earlier message with the same Nats-Msg-Id on another subject, or one
// deleted since): the event was not stored. See DuplicateError.
var ErrUnexpectedDuplicate = errors.New("derived: JetStream discarded the event as a duplicate of another message")

// DuplicateError is the ErrUnexpectedDuplicate of one publish: what was
// published and what the stream holds at the sequence the acknowledgement
// named.
type DuplicateError struct {
	Stream   string
	Subject  string
	MsgID    string
	Sequence uint64 // the acknowledged sequence
	Held     string // what the stream holds there
}

func (e *DuplicateError) Error() string {
	return fmt.Sprintf("derived: %s on %s acknowledged as a duplicate of %s sequence %d, which holds %s: not stored",
		e.MsgID, e.Subject, e.Stream, e.Sequence, e.Held)
}

func (e *DuplicateError) Unwrap() error { return ErrUnexpectedDuplicate }

// ErrInvalidKey reports a Partition header value EscapeKey cannot have
// produced.
var ErrInvalidKey = errors.New("derived: invalid escaped partition key")
