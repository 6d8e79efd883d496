// Package eventmsg maps stored events to JetStream messages and back: the
// subject, the headers of the contract and the body. The feeder writes these
// messages; projections read them.
package eventmsg

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/subject"
)

// Header names of an event message. They are part of the contract.
const (
	HeaderMsgID            = nats.MsgIdHdr // "Nats-Msg-Id"
	HeaderEventType        = "Event-Type"
	HeaderEventPosition    = "Event-Position"
	HeaderEventTransaction = "Event-Transaction"
	HeaderAggregateType    = "Aggregate-Type"
	HeaderAggregateID      = "Aggregate-Id"
	HeaderAggregateVersion = "Aggregate-Version"
	HeaderRecordedAt       = "Recorded-At"
	HeaderTraceParent      = "traceparent"
	HeaderTraceState       = "tracestate"
	// MetaPrefix prefixes one header per metadata entry: metadata key
	// "tenant" becomes header "Meta-tenant". Keys are encoded like subject
	// tokens (see package subject); values that are JSON strings are sent as
	// their contents, other JSON values as compact JSON, and values holding
	// control characters as a quoted JSON string.
	MetaPrefix = "Meta-"
)

// MsgID is the deterministic Nats-Msg-Id of the event at position.
func MsgID(position int64) string { return "event-" + strconv.FormatInt(position, 10) }

// HeaderExpectedLastSequence is the JetStream header that makes the stream
// refuse a message unless its last sequence is the given one (sequence
// fencing); NewFenced sets it.
const HeaderExpectedLastSequence = "Nats-Expected-Last-Sequence"

// New builds the message for e, published under subject prefix (normally
// "events").
func New(prefix string, e eventstore.Event) (*nats.Msg, error) {
	return build(prefix, e, false, 0)
}

// NewFenced is New with the sequence fence the feeder publishes under:
// header Nats-Expected-Last-Sequence set to lastSeq, so that the stream
// stores the message only right after its message lastSeq (the same header
// as jetstream.WithExpectLastSequence, built with the others).
func NewFenced(prefix string, e eventstore.Event, lastSeq uint64) (*nats.Msg, error) {
	return build(prefix, e, true, lastSeq)
}

func build(prefix string, e eventstore.Event, fenced bool, lastSeq uint64) (*nats.Msg, error) {
	subj, err := subject.EventWithPrefix(prefix, e.AggregateType, e.AggregateID)
	if err != nil {
		return nil, err
	}
	// The feeder builds one message per event: the numbers and the time
	// are formatted into one string and the values share one backing
	// array, so that a message costs a few allocations, not one per header.
	var buf [96]byte
	b := append(buf[:0], "event-"...)
	b = strconv.AppendInt(b, e.Position, 10)
	msgIDEnd := len(b)
	b = strconv.AppendUint(b, e.TransactionID, 10)
	txEnd := len(b)
	b = strconv.AppendInt(b, e.Version, 10)
	versionEnd := len(b)
	b = e.RecordedAt.UTC().AppendFormat(b, time.RFC3339Nano)
	recordedEnd := len(b)
	if fenced {
		b = strconv.AppendUint(b, lastSeq, 10)
	}
	nums := string(b)
	fixed := 8
	if fenced {
		fixed++
	}
	vals := make([]string, fixed, fixed+2*len(e.Metadata))
	vals[0] = nums[:msgIDEnd]
	vals[1] = headerValue(e.Type)
	vals[2] = nums[len("event-"):msgIDEnd]
	vals[3] = nums[msgIDEnd:txEnd]
	vals[4] = headerValue(e.AggregateType)
	vals[5] = headerValue(e.AggregateID)
	vals[6] = nums[txEnd:versionEnd]
	vals[7] = nums[versionEnd:recordedEnd]
	// Sized for every header, fence included: a key added later would
	// grow the map for every message.
	h := make(nats.Header, fixed+2*len(e.Metadata))
	h[HeaderMsgID] = vals[0:1:1]
	h[HeaderEventType] = vals[1:2:2]
	h[HeaderEventPosition] = vals[2:3:3]
	h[HeaderEventTransaction] = vals[3:4:4]
	h[HeaderAggregateType] = vals[4:5:5]
	h[HeaderAggregateID] = vals[5:6:6]
	h[HeaderAggregateVersion] = vals[6:7:7]
	h[HeaderRecordedAt] = vals[7:8:8]
	if fenced {
		vals[8] = nums[recordedEnd:]
		h[HeaderExpectedLastSequence] = vals[8:9:9]
	}
	if len(e.Metadata) > 0 {
		keys := make([]string, 0, len(e.Metadata))
		for k := range e.Metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v, _ := e.Metadata.String(k)
			v = headerValue(v)
			switch k {
			case HeaderTraceParent, HeaderTraceState:
				vals = append(vals, v)
				h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
			}
			// The name MetaHeader gives; v is already the header value.
			vals = append(vals, v)
			h[MetaPrefix+subject.EncodeToken(k)] = vals[len(vals)-1 : len(vals) : len(vals)]
		}
	}
	return &nats.Msg{Subject: subj, Header: h, Data: e.Payload}, nil
}

// MetaHeader is the header name and value under which an event message
// carries the metadata entry key: value (MetaPrefix and the key encoded like
// a subject token; the value as headerValue keeps it). Derived events
// carry their metadata the same way.
func MetaHeader(key, value string) (name, val string) {
	return MetaPrefix + subject.EncodeToken(key), headerValue(value)
}

// MetaEntry reverses MetaHeader for a header name and value; ok is false
// for a header that is not a metadata entry, or whose key was hashed.
func MetaEntry(name, value string) (key, val string, ok bool) {
	enc, ok := strings.CutPrefix(name, MetaPrefix)
	if !ok {
		return "", "", false
	}
	key, err := subject.DecodeToken(enc)
	if err != nil {
		return "", "", false
	}
	return key, unquote(value), true
}

// headerValue keeps a value on one header line and unchanged by the trip:
// values with control characters, leading or trailing white space (which
// the client trims) or a leading double quote are sent as a quoted Go
// string; every other value as it is. So a value starting with a double
// quote is always a quoted one.
func headerValue(s string) string {
	if s != "" && (s[0] == '"' || s[0] == ' ' || s[len(s)-1] == ' ') {
		return strconv.Quote(s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return strconv.Quote(s)
		}
	}
	return s
}

// Event is what a reader learns from an event message.
type Event struct {
	Position      int64
	TransactionID uint64
	AggregateType string
	AggregateID   string
	Version       int64
	Type          string
	RecordedAt    time.Time
	Payload       []byte
	// Metadata holds the Meta-* headers, keys decoded.
	Metadata map[string]string
	// TraceParent is the W3C traceparent header, if any.
	TraceParent string
}

// Parse reads an event message. Messages published by something other than
// a feeder give an error wrapping ErrNotEvent that names what is missing.
func Parse(m *nats.Msg) (Event, error) {
	var e Event
	var problems []string
	get := func(name string) string {
		v := m.Header.Get(name)
		if v == "" {
			problems = append(problems, "no "+name+" header")
		}
		return v
	}
	var err error
	if e.Position, err = strconv.ParseInt(get(HeaderEventPosition), 10, 64); err != nil {
		problems = append(problems, "bad "+HeaderEventPosition)
	}
	if v := m.Header.Get(HeaderEventTransaction); v != "" {
		if e.TransactionID, err = strconv.ParseUint(v, 10, 64); err != nil {
			problems = append(problems, "bad "+HeaderEventTransaction)
		}
	}
	if e.Version, err = strconv.ParseInt(get(HeaderAggregateVersion), 10, 64); err != nil {
		problems = append(problems, "bad "+HeaderAggregateVersion)
	}
	e.Type = unquote(get(HeaderEventType))
	e.AggregateType = unquote(m.Header.Get(HeaderAggregateType))
	e.AggregateID = unquote(m.Header.Get(HeaderAggregateID))
	if _, ok := m.Header[HeaderAggregateType]; !ok {
		problems = append(problems, "no "+HeaderAggregateType+" header")
	}
	if t := m.Header.Get(HeaderRecordedAt); t != "" {
		e.RecordedAt, _ = time.Parse(time.RFC3339Nano, t)
	}
	if len(problems) > 0 {
		return e, fmt.Errorf("%w: %s: %s", ErrNotEvent, m.Subject, strings.Join(problems, ", "))
	}
	e.Payload = m.Data
	e.TraceParent = m.Header.Get(HeaderTraceParent)
	for k, v := range m.Header {
		if len(v) == 0 {
			continue
		}
		if key, val, ok := MetaEntry(k, v[0]); ok {
			if e.Metadata == nil {
				e.Metadata = make(map[string]string)
			}
			e.Metadata[key] = val
		}
	}
	return e, nil
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' {
		if u, err := strconv.Unquote(s); err == nil {
			return u
		}
	}
	return s
}
