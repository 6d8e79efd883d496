// Package eventmsg maps stored events to JetStream messages and back: the
// subject, the headers of the contract (their names are package contract's)
// and the body. The feeder writes these messages; projections read them.
package eventmsg

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/subject"
)

// New builds the message for e, published under subject prefix (normally
// contract.EventsPrefix).
func New(prefix string, e eventstore.Event) (*nats.Msg, error) {
	return build(prefix, e, false, 0)
}

// NewFenced is New with the sequence fence the feeder publishes under:
// header Nats-Expected-Last-Sequence (contract.HeaderExpectedLastSequence)
// set to lastSeq, so that the stream stores the message only right after
// its message lastSeq (the same header as jetstream.WithExpectLastSequence,
// built with the others).
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
	b := append(buf[:0], contract.EventMsgIDPrefix...)
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
	vals[2] = nums[len(contract.EventMsgIDPrefix):msgIDEnd]
	vals[3] = nums[msgIDEnd:txEnd]
	vals[4] = headerValue(e.AggregateType)
	vals[5] = headerValue(e.AggregateID)
	vals[6] = nums[txEnd:versionEnd]
	vals[7] = nums[versionEnd:recordedEnd]
	// Sized for every header, fence included: a key added later would
	// grow the map for every message.
	h := make(nats.Header, fixed+2*len(e.Metadata))
	h[contract.HeaderMsgID] = vals[0:1:1]
	h[contract.HeaderEventType] = vals[1:2:2]
	h[contract.HeaderEventPosition] = vals[2:3:3]
	h[contract.HeaderEventTransaction] = vals[3:4:4]
	h[contract.HeaderAggregateType] = vals[4:5:5]
	h[contract.HeaderAggregateID] = vals[5:6:6]
	h[contract.HeaderAggregateVersion] = vals[6:7:7]
	h[contract.HeaderRecordedAt] = vals[7:8:8]
	if fenced {
		vals[8] = nums[recordedEnd:]
		h[contract.HeaderExpectedLastSequence] = vals[8:9:9]
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
			case contract.HeaderTraceParent, contract.HeaderTraceState:
				vals = append(vals, v)
				h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
			}
			// The name MetaHeader gives; v is already the header value.
			vals = append(vals, v)
			h[contract.MetaPrefix+subject.EncodeToken(k)] = vals[len(vals)-1 : len(vals) : len(vals)]
		}
	}
	return &nats.Msg{Subject: subj, Header: h, Data: e.Payload}, nil
}

// MetaHeader is the header name and value under which an event message
// carries the metadata entry key: value (contract.MetaPrefix and the key
// encoded like a subject token; the value as headerValue keeps it).
// Derived events carry their metadata the same way.
func MetaHeader(key, value string) (name, val string) {
	return contract.MetaPrefix + subject.EncodeToken(key), headerValue(value)
}

// MetaEntry reverses MetaHeader for a header name and value; ok is false
// for a header that is not a metadata entry, or whose key was hashed.
func MetaEntry(name, value string) (key, val string, ok bool) {
	enc, ok := strings.CutPrefix(name, contract.MetaPrefix)
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
	if e.Position, err = strconv.ParseInt(get(contract.HeaderEventPosition), 10, 64); err != nil {
		problems = append(problems, "bad "+contract.HeaderEventPosition)
	}
	if v := m.Header.Get(contract.HeaderEventTransaction); v != "" {
		if e.TransactionID, err = strconv.ParseUint(v, 10, 64); err != nil {
			problems = append(problems, "bad "+contract.HeaderEventTransaction)
		}
	}
	if e.Version, err = strconv.ParseInt(get(contract.HeaderAggregateVersion), 10, 64); err != nil {
		problems = append(problems, "bad "+contract.HeaderAggregateVersion)
	}
	e.Type = unquote(get(contract.HeaderEventType))
	e.AggregateType = unquote(m.Header.Get(contract.HeaderAggregateType))
	e.AggregateID = unquote(m.Header.Get(contract.HeaderAggregateID))
	if _, ok := m.Header[contract.HeaderAggregateType]; !ok {
		problems = append(problems, "no "+contract.HeaderAggregateType+" header")
	}
	if t := m.Header.Get(contract.HeaderRecordedAt); t != "" {
		e.RecordedAt, _ = time.Parse(time.RFC3339Nano, t)
	}
	if len(problems) > 0 {
		return e, fmt.Errorf("%w: %s: %s", ErrNotEvent, m.Subject, strings.Join(problems, ", "))
	}
	e.Payload = m.Data
	e.TraceParent = m.Header.Get(contract.HeaderTraceParent)
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
