package eventstore

import (
	"encoding/json"
	"fmt"
	"time"
)

// Event is one stored event.
type Event struct {
	// Position is the global, increasing position assigned at insert. Rows
	// become visible out of position order when transactions commit out of
	// order; the feeder handles that.
	Position int64
	// TransactionID is the id of the transaction that wrote the row.
	TransactionID uint64
	AggregateType string
	AggregateID   string
	// Version is the aggregate's version after this event, from 1.
	Version    int64
	Type       string
	Payload    json.RawMessage
	Metadata   Metadata
	RecordedAt time.Time
}

// Cursor is a point in the feeder's reading order: (transaction id, position).
// The zero Cursor is before every event.
type Cursor struct {
	TransactionID uint64
	Position      int64
}

// Cursor returns the point right at e.
func (e Event) Cursor() Cursor { return Cursor{TransactionID: e.TransactionID, Position: e.Position} }

// Less reports whether c comes before d in the feeder's reading order.
func (c Cursor) Less(d Cursor) bool {
	if c.TransactionID != d.TransactionID {
		return c.TransactionID < d.TransactionID
	}
	return c.Position < d.Position
}

func (c Cursor) String() string { return fmt.Sprintf("%d/%d", c.TransactionID, c.Position) }

// Metadata is an event's metadata: a JSON object. Values are kept as JSON so
// that rows written by other languages round-trip unchanged.
type Metadata map[string]json.RawMessage

// TraceParentKey is the metadata key that carries a W3C traceparent.
const TraceParentKey = "traceparent"

// String returns the value of key as a string: a JSON string's contents, or
// the raw JSON of any other value. ok is false when the key is absent.
func (m Metadata) String(key string) (s string, ok bool) {
	raw, ok := m[key]
	if !ok {
		return "", false
	}
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true
	}
	return string(raw), true
}

// TraceParent returns the W3C traceparent carried in the metadata, if any.
func (m Metadata) TraceParent() string {
	s, _ := m.String(TraceParentKey)
	return s
}

// NewEvent is an event to append.
type NewEvent struct {
	// Type names the event, e.g. "MoneyWasAddedToWallet". Required.
	Type string
	// Payload is marshalled to JSON unless it already is a json.RawMessage
	// or []byte holding JSON.
	Payload any
	// Metadata is stored as a JSON object; a "traceparent" entry is carried
	// through to the event's message headers.
	Metadata map[string]string
}

// ExpectAny and ExpectNoStream are special expected versions for Append.
const (
	// ExpectAny appends whatever the aggregate's current version is.
	ExpectAny int64 = -1
	// ExpectNoStream appends only to an aggregate with no events yet.
	ExpectNoStream int64 = 0
)
