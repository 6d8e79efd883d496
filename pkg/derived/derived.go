// Package derived is the contract of derived events on JetStream — their
// headers, linked streams and the marks that make publishing them exactly
// once — shared by the two publishers: the emitter, which relays the
// outbox of projections with a PostgreSQL sink, and the projector, which
// publishes the events of projections whose state lives in KV.
//
// Every derived event carries its partition's generation and emission
// sequence (headers Projection-Generation and Emission-Seq). A publisher
// reads the last message on a subject before it publishes there for the
// first time (Tracker) and skips what the stream already holds, so exactly
// once does not rest on the duplicate window.
package derived

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/subject"
	"github.com/jetproj/jetproj/pkg/tracing"
)

// Header names of derived events.
const (
	HeaderEventType      = "Event-Type"
	HeaderProjection     = "Projection"
	HeaderPartition      = "Partition"
	HeaderGeneration     = "Projection-Generation"
	HeaderEmissionSeq    = "Emission-Seq"
	HeaderSourcePosition = "Source-Position"
	HeaderSourceSequence = "Source-Sequence"
)

// Event is a derived event ready to publish.
type Event struct {
	Projection string
	Partition  string
	// Subject is its subject on the projection's own stream.
	Subject string
	MsgID   string
	// Generation and Seq place it among its partition's derived events.
	Generation     int
	Seq            uint64
	Type           string
	Payload        []byte
	LinkTo         string
	SourceSeq      uint64
	SourcePosition int64
	TraceParent    string
}

// Mark returns the event's place among its partition's derived events.
func (e Event) Mark() Mark { return Mark{Gen: e.Generation, Seq: e.Seq} }

// Msg is the message that publishes e on subj.
func (e Event) Msg(subj string) *nats.Msg {
	m := nats.NewMsg(subj)
	m.Data = e.Payload
	m.Header.Set(nats.MsgIdHdr, e.MsgID)
	m.Header.Set(HeaderEventType, e.Type)
	m.Header.Set(HeaderProjection, e.Projection)
	m.Header.Set(HeaderPartition, e.Partition)
	m.Header.Set(HeaderGeneration, strconv.Itoa(e.Generation))
	m.Header.Set(HeaderEmissionSeq, strconv.FormatUint(e.Seq, 10))
	m.Header.Set(HeaderSourceSequence, strconv.FormatUint(e.SourceSeq, 10))
	if e.SourcePosition > 0 {
		m.Header.Set(HeaderSourcePosition, strconv.FormatInt(e.SourcePosition, 10))
	}
	if e.TraceParent != "" {
		m.Header.Set(tracing.Header, e.TraceParent)
	}
	return m
}

// Mark is the generation and emission sequence of a derived event.
type Mark struct {
	Gen int
	Seq uint64
}

// Before reports whether m comes before o.
func (m Mark) Before(o Mark) bool { return m.Gen < o.Gen || m.Gen == o.Gen && m.Seq < o.Seq }

// MarkOf reads the mark of a derived event from its headers.
func MarkOf(h nats.Header) Mark {
	var m Mark
	m.Gen, _ = strconv.Atoi(h.Get(HeaderGeneration))
	m.Seq, _ = strconv.ParseUint(h.Get(HeaderEmissionSeq), 10, 64)
	return m
}

// LinkTarget is where an event of the projection's subject subj linked to
// link goes: stream link with subjects <link>.>, subject
// <link>.<projection>.<partition tokens>.
func LinkTarget(link, subj string) (stream, target string, err error) {
	prefix := strings.ToLower(link)
	if err := subject.ValidName(prefix); err != nil {
		return "", "", fmt.Errorf("LinkTo %q: %w", link, err)
	}
	return link, prefix + "." + strings.TrimPrefix(subj, "project."), nil
}

// linkDescription marks the streams jetproj created for LinkTo.
const linkDescription = "jetproj linked stream"

// ErrNotLinkStream reports a LinkTo whose stream exists and was not created
// for links (EVENTS, a projection's own stream, another team's stream):
// jetproj never changes such a stream.
var ErrNotLinkStream = errors.New("stream exists and is not a jetproj linked stream")

// EnsureLinkStream creates the linked stream link, or checks that the
// stream of that name is one jetproj created for links.
func EnsureLinkStream(ctx context.Context, js jetstream.JetStream, link string, replicas int) error {
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: link, Subjects: []string{strings.ToLower(link) + ".>"},
		Replicas: max(replicas, 1), AllowDirect: true, Storage: jetstream.FileStorage,
		Description: linkDescription})
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		s, serr := js.Stream(ctx, link)
		if serr != nil {
			return fmt.Errorf("linked stream %s: %w", link, serr)
		}
		if cfg := s.CachedInfo().Config; cfg.Description != linkDescription {
			return fmt.Errorf("linked stream %s: %w (subjects %v)", link, ErrNotLinkStream, cfg.Subjects)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("linked stream %s: %w", link, err)
	}
	return nil
}

// Tracker knows what streams hold: the mark of the last derived event on
// each subject, read from the stream the first time it is asked, then kept
// as the publisher publishes. Safe for concurrent use.
type Tracker struct {
	js      jetstream.JetStream
	mu      sync.Mutex
	last    map[string]Mark
	streams map[string]jetstream.Stream
	linked  map[string]bool
}

// NewTracker returns an empty Tracker.
func NewTracker(js jetstream.JetStream) *Tracker {
	t := &Tracker{js: js}
	t.Forget()
	return t
}

// Forget drops everything the tracker believes, e.g. after a failed
// publish or when another publisher may have run.
func (t *Tracker) Forget() {
	t.mu.Lock()
	t.last, t.streams, t.linked = map[string]Mark{}, map[string]jetstream.Stream{}, map[string]bool{}
	t.mu.Unlock()
}

// Drop forgets the marks of subjs: they are read from their streams again.
func (t *Tracker) Drop(subjs ...string) {
	t.mu.Lock()
	for _, s := range subjs {
		delete(t.last, s)
	}
	t.mu.Unlock()
}

// Known reports whether the mark of subj is known without reading.
func (t *Tracker) Known(subj string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.last[subj]
	return ok
}

// Set records that the stream holds m on subj.
func (t *Tracker) Set(subj string, m Mark) {
	t.mu.Lock()
	t.last[subj] = m
	t.mu.Unlock()
}

// Len is the number of subjects tracked.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.last)
}

// Last is the mark of the last derived event stream holds on subj (zero
// when none). A stream that does not exist gives jetstream.ErrStreamNotFound.
func (t *Tracker) Last(ctx context.Context, stream, subj string) (Mark, error) {
	t.mu.Lock()
	m, ok := t.last[subj]
	s := t.streams[stream]
	t.mu.Unlock()
	if ok {
		return m, nil
	}
	if s == nil {
		var err error
		if s, err = t.js.Stream(ctx, stream); err != nil {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				t.mu.Lock()
				delete(t.linked, stream) // a linked stream is created again
				t.mu.Unlock()
			}
			return Mark{}, err
		}
		t.mu.Lock()
		t.streams[stream] = s
		t.mu.Unlock()
	}
	raw, err := s.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Set(subj, Mark{})
		return Mark{}, nil
	}
	if err != nil {
		t.mu.Lock()
		delete(t.streams, stream) // deleted or recreated: look it up again
		delete(t.linked, stream)  // a linked stream is created again
		t.mu.Unlock()
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return Mark{}, err
		}
		if _, serr := t.js.Stream(ctx, stream); errors.Is(serr, jetstream.ErrStreamNotFound) {
			return Mark{}, serr
		}
		return Mark{}, err
	}
	m = MarkOf(raw.Header)
	t.Set(subj, m)
	return m, nil
}

// Link returns the stream and subject an event of subj linked to link goes
// to, creating the linked stream the first time.
func (t *Tracker) Link(ctx context.Context, link, subj string, replicas int) (string, string, error) {
	stream, target, err := LinkTarget(link, subj)
	if err != nil {
		return "", "", err
	}
	t.mu.Lock()
	ensured := t.linked[link]
	t.mu.Unlock()
	if !ensured {
		if err := EnsureLinkStream(ctx, t.js, link, replicas); err != nil {
			return "", "", err
		}
		t.mu.Lock()
		t.linked[link] = true
		t.mu.Unlock()
	}
	return stream, target, nil
}
