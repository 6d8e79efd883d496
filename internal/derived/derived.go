// Package derived builds and publishes derived events on JetStream — their
// headers, linked streams and the marks that make publishing them exactly
// once — for the two publishers: the emitter, which relays the outbox of
// projections with a PostgreSQL sink, and the projector, which publishes
// the events of projections whose state lives in KV. The names of the
// headers, streams and subjects are package contract's.
//
// Every derived event carries its partition's generation and emission
// sequence (headers Projection-Generation and Emission-Seq). A publisher
// reads the last message on a subject before it publishes there for the
// first time (Tracker) and skips what the stream already holds, so exactly
// once does not rest on the duplicate window.
package derived

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/subject"
)

// Link is a stream a derived event is linked to.
type Link struct {
	Stream string `json:"stream"`
	// Existing: the stream was not created by jetproj and the user opted
	// in to it by name (projection.LinkExisting): it is used as it is,
	// never created nor checked for jetproj's mark.
	Existing bool `json:"existing,omitempty"`
}

// Event is a derived event ready to publish.
type Event struct {
	Projection string
	// Partition is the partition's key, raw: Msg sends it escaped
	// (EscapeKey).
	Partition string
	// Subject is its subject on the projection's own stream.
	Subject string
	// MsgID is its Nats-Msg-Id; Msg uses MsgID(Projection, Generation,
	// Partition, Seq) when empty.
	MsgID string
	// Generation and Seq place it among its partition's derived events.
	Generation int
	Seq        uint64
	Type       string
	Payload    []byte
	// Links are the streams it is linked to; LinkOnly leaves the
	// projection's own stream out.
	Links          []Link
	LinkOnly       bool
	SourceSeq      uint64
	SourcePosition int64
	TraceParent    string
	// Metadata is sent as Meta-* headers, encoded as the feeder encodes an
	// event's metadata; its correlation_id entry as Correlation-Id too.
	Metadata map[string]string
	// CausationID is the source event's id (contract.HeaderCausationID).
	CausationID string
}

// Mark returns the event's place among its partition's derived events.
func (e Event) Mark() Mark { return Mark{Gen: e.Generation, Seq: e.Seq} }

// Msg is the message that publishes e on subj.
func (e Event) Msg(subj string) *nats.Msg {
	id := e.MsgID
	if id == "" {
		id = MsgID(e.Projection, e.Generation, e.Partition, e.Seq)
	}
	// One backing array for the header values and a map sized for them: a
	// relay builds one message per outbox row.
	vals := make([]string, 0, 10+len(e.Metadata)+1)
	h := make(nats.Header, cap(vals))
	set := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	set(nats.MsgIdHdr, id)
	set(contract.HeaderEventType, e.Type)
	set(contract.HeaderProjection, e.Projection)
	set(contract.HeaderPartition, EscapeKey(e.Partition))
	set(contract.HeaderGeneration, strconv.Itoa(e.Generation))
	set(contract.HeaderEmissionSeq, strconv.FormatUint(e.Seq, 10))
	set(contract.HeaderSourceSequence, strconv.FormatUint(e.SourceSeq, 10))
	if e.SourcePosition > 0 {
		set(contract.HeaderSourcePosition, strconv.FormatInt(e.SourcePosition, 10))
	}
	if e.TraceParent != "" {
		set(contract.HeaderTraceParent, e.TraceParent)
	}
	if e.CausationID != "" {
		set(contract.HeaderCausationID, e.CausationID)
	}
	for k, v := range e.Metadata {
		name, val := eventmsg.MetaHeader(k, v)
		set(name, val)
		if k == contract.MetadataCorrelationID {
			set(contract.HeaderCorrelationID, val)
		}
	}
	return &nats.Msg{Subject: subj, Data: e.Payload, Header: h}
}

// Target is a stream and subject a derived event is published to.
type Target struct{ Stream, Subject string }

// Targets lists where e goes, each once: the projection's own stream
// ownStream on e.Subject unless e.LinkOnly, then each linked stream on
// <lowercase link>.<projection>.<partition tokens>. Linked streams are
// created the first time (Link); an error names the link it concerns.
func (t *Tracker) Targets(ctx context.Context, ownStream string, e Event, replicas int) ([]Target, error) {
	to := make([]Target, 0, 1+len(e.Links))
	if !e.LinkOnly {
		to = append(to, Target{ownStream, e.Subject})
	}
	for _, l := range e.Links {
		stream, subj, err := t.Link(ctx, l, e.Subject, replicas)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(to, Target{stream, subj}) {
			to = append(to, Target{stream, subj})
		}
	}
	return to, nil
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
	m.Gen, _ = strconv.Atoi(h.Get(contract.HeaderGeneration))
	m.Seq, _ = strconv.ParseUint(h.Get(contract.HeaderEmissionSeq), 10, 64)
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
	return link, contract.LinkedSubject(link, subj), nil
}

// EnsureLinkStream creates the linked stream link, or checks that the
// stream of that name is one jetproj created for links.
func EnsureLinkStream(ctx context.Context, js jetstream.JetStream, link string, replicas int) error {
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: link, Subjects: []string{contract.LinkedSubjects(link)},
		Replicas: max(replicas, 1), AllowDirect: true, Storage: jetstream.FileStorage,
		Description: contract.LinkedStreamDescription})
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		s, serr := js.Stream(ctx, link)
		if serr != nil {
			return fmt.Errorf("linked stream %s: %w", link, serr)
		}
		if cfg := s.CachedInfo().Config; cfg.Description != contract.LinkedStreamDescription {
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

// Acked records that JetStream acknowledged msg (built by Event.Msg) with
// ack, and returns nil when the stream holds it. An acknowledgement marked
// Duplicate is expected after a publish whose fate was unknown (a timeout,
// a crash): the stream then holds this very event — its subject and mark —
// at the acknowledged sequence. Anything else there (another subject,
// another mark, nothing) means JetStream dropped the event: Acked returns a
// *DuplicateError wrapping ErrUnexpectedDuplicate and records nothing, and
// the publisher must keep the event and try again later (after the
// stream's duplicate window, the same message is stored). Acked reads the
// stream only for duplicates.
func (t *Tracker) Acked(ctx context.Context, msg *nats.Msg, ack *jetstream.PubAck) error {
	mark := MarkOf(msg.Header)
	if ack == nil || !ack.Duplicate {
		t.Set(msg.Subject, mark)
		return nil
	}
	s, err := t.stream(ctx, ack.Stream)
	if err != nil {
		return fmt.Errorf("derived: check duplicate acknowledgement of %s: %w", msg.Subject, err)
	}
	derr := &DuplicateError{Stream: ack.Stream, Subject: msg.Subject, MsgID: msg.Header.Get(nats.MsgIdHdr), Sequence: ack.Sequence}
	raw, err := s.GetMsg(ctx, ack.Sequence)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		derr.Held = "nothing (deleted)"
		return derr
	case err != nil:
		return fmt.Errorf("derived: check duplicate acknowledgement of %s: %w", msg.Subject, err)
	}
	held := MarkOf(raw.Header)
	if raw.Subject == msg.Subject && held == mark && raw.Header.Get(contract.HeaderProjection) == msg.Header.Get(contract.HeaderProjection) {
		t.Set(msg.Subject, mark) // published before; the stream holds it
		return nil
	}
	derr.Held = fmt.Sprintf("%s on %s (generation %d, emission %d)", raw.Header.Get(nats.MsgIdHdr), raw.Subject, held.Gen, held.Seq)
	return derr
}

// stream is the named stream, looked up once.
func (t *Tracker) stream(ctx context.Context, name string) (jetstream.Stream, error) {
	t.mu.Lock()
	s := t.streams[name]
	t.mu.Unlock()
	if s != nil {
		return s, nil
	}
	s, err := t.js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.streams[name] = s
	t.mu.Unlock()
	return s, nil
}

// Link returns the stream and subject an event of subj linked to link goes
// to, creating the linked stream the first time. A stream that exists and
// was not created by jetproj for links is refused (ErrNotLinkStream)
// unless link.Existing: then it is used as it is, never created.
func (t *Tracker) Link(ctx context.Context, link Link, subj string, replicas int) (string, string, error) {
	stream, target, err := LinkTarget(link.Stream, subj)
	if err != nil || link.Existing {
		return stream, target, err
	}
	t.mu.Lock()
	ensured := t.linked[stream]
	t.mu.Unlock()
	if !ensured {
		if err := EnsureLinkStream(ctx, t.js, stream, replicas); err != nil {
			return "", "", err
		}
		t.mu.Lock()
		t.linked[stream] = true
		t.mu.Unlock()
	}
	return stream, target, nil
}

// multiLastChunk is how many subjects one multi-subject direct get asks
// for; the server answers at most 1024 messages per request.
const multiLastChunk = 512

// Prefetch reads, in a few requests, what stream holds on those of subjs
// whose marks the tracker does not know yet: a multi-subject direct get
// (multi_last, the stream must allow direct gets) per 512 subjects, rather
// than one request per subject. Subjects it could not settle (a stream
// without direct gets, an answer cut short) stay unknown and are read one
// by one by Last. A stream that does not exist is not an error here.
func (t *Tracker) Prefetch(ctx context.Context, stream string, subjs []string) error {
	var todo []string
	t.mu.Lock()
	for _, s := range subjs {
		if _, ok := t.last[s]; !ok {
			todo = append(todo, s)
		}
	}
	t.mu.Unlock()
	for len(todo) > 0 {
		chunk := todo[:min(len(todo), multiLastChunk)]
		todo = todo[len(chunk):]
		if err := t.multiLast(ctx, stream, chunk); err != nil {
			return err
		}
	}
	return nil
}

func (t *Tracker) multiLast(ctx context.Context, stream string, subjs []string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	nc := t.js.Conn()
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{subjs})
	if err != nil {
		return err
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe() //nolint:errcheck
	if err := nc.PublishRequest(apiPrefix(t.js)+"DIRECT.GET."+stream, inbox, req); err != nil {
		return err
	}
	got := map[string]Mark{}
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil // unsettled: Last reads them
		}
		if status := m.Header.Get("Status"); status != "" {
			// 204 ends the answer (cut short when messages are still
			// pending: the others stay unknown), 404 says no subject holds
			// a message.
			complete := status == "404" || status == "204" && m.Header.Get("Nats-Num-Pending") == "0"
			if status == "204" || complete {
				t.settle(subjs, got, complete)
			}
			// 503 no responders (no stream, or no direct gets), 408, 413…:
			// unsettled.
			return nil
		}
		subj := m.Header.Get("Nats-Subject")
		if subj == "" {
			return nil
		}
		got[subj] = MarkOf(m.Header)
	}
}

// settle records the marks of got that the tracker does not know yet,
// and, when complete, an empty mark for every other of subjs.
func (t *Tracker) settle(subjs []string, got map[string]Mark, complete bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range subjs {
		m, ok := got[s]
		if _, known := t.last[s]; !known && (ok || complete) {
			t.last[s] = m
		}
	}
}

// apiPrefix is the JetStream API prefix js sends requests to.
func apiPrefix(js jetstream.JetStream) string {
	o := js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return jetstream.DefaultAPIPrefix
}
