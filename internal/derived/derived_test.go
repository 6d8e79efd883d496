package derived_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/derived"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func TestMsgCarriesItsMark(t *testing.T) {
	e := derived.Event{Projection: "wallet_balance", Partition: "wallet/w1", Subject: "project.wallet_balance.wallet.w1",
		MsgID: "wallet_balance:2:wallet/w1:7", Generation: 2, Seq: 7, Type: "WalletBalanceWasChanged", Payload: []byte(`{}`),
		SourceSeq: 40, SourcePosition: 39, TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	m := e.Msg(e.Subject)
	if got := derived.MarkOf(m.Header); got != e.Mark() {
		t.Fatalf("mark %+v, want %+v", got, e.Mark())
	}
	for h, want := range map[string]string{"Nats-Msg-Id": e.MsgID, contract.HeaderEventType: e.Type, contract.HeaderPartition: e.Partition,
		contract.HeaderSourceSequence: "40", contract.HeaderSourcePosition: "39", "traceparent": e.TraceParent} {
		if got := m.Header.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
	if !(derived.Mark{Gen: 1, Seq: 9}).Before(derived.Mark{Gen: 2, Seq: 1}) || (derived.Mark{Gen: 2, Seq: 2}).Before(derived.Mark{Gen: 2, Seq: 2}) {
		t.Fatal("Before orders by generation, then sequence")
	}
}

func TestLinkTarget(t *testing.T) {
	stream, subj, err := derived.LinkTarget("completed_orders", "project.order_fulfilment.order.o1")
	if err != nil || stream != "completed_orders" || subj != "completed_orders.order_fulfilment.order.o1" {
		t.Fatalf("%q %q %v", stream, subj, err)
	}
	if _, _, err := derived.LinkTarget("bad name", "project.x.y"); err == nil {
		t.Fatal("an invalid stream name was accepted")
	}
}

func TestTrackerReadsWhatTheStreamHolds(t *testing.T) {
	ctx := context.Background()
	_, js := devtest.Connect(t, devtest.NATS(t))
	tr := derived.NewTracker(js)
	if _, err := tr.Last(ctx, "PROJECT_NONE", "project.none.a"); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("missing stream: %v", err)
	}
	stream, subj, err := tr.Link(ctx, derived.Link{Stream: "linked"}, "project.p.k", 1)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := tr.Last(ctx, stream, subj); err != nil || m != (derived.Mark{}) {
		t.Fatalf("empty subject: %+v %v", m, err)
	}
	e := derived.Event{Projection: "p", Partition: "k", MsgID: "p:3:k:5", Generation: 3, Seq: 5, Type: "T"}
	if _, err := js.PublishMsg(ctx, e.Msg(subj)); err != nil {
		t.Fatal(err)
	}
	// Cached until forgotten; then read from the stream.
	if m, _ := tr.Last(ctx, stream, subj); m != (derived.Mark{}) {
		t.Fatalf("cached mark %+v", m)
	}
	tr.Forget()
	if m, err := tr.Last(ctx, stream, subj); err != nil || m != e.Mark() {
		t.Fatalf("mark %+v %v, want %+v", m, err, e.Mark())
	}
}

// A LinkTo naming a stream jetproj did not create for links (here the
// source stream) is refused and the stream left as it was; a linked
// stream is created once and accepted after.
func TestEnsureLinkStreamChangesNoOtherStream(t *testing.T) {
	ctx := context.Background()
	_, js := devtest.Connect(t, devtest.NATS(t))
	cfg := jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"events.>"}, MaxAge: time.Hour, Duplicates: time.Minute}
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	err := derived.EnsureLinkStream(ctx, js, "EVENTS", 1)
	if !errors.Is(err, derived.ErrNotLinkStream) {
		t.Fatalf("EnsureLinkStream(EVENTS) = %v; want ErrNotLinkStream", err)
	}
	s, err := js.Stream(ctx, "EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config; got.MaxAge != time.Hour || got.Description != "" {
		t.Fatalf("EVENTS changed: max age %v, description %q", got.MaxAge, got.Description)
	}
	for range 2 {
		if err := derived.EnsureLinkStream(ctx, js, "completed_orders", 1); err != nil {
			t.Fatalf("EnsureLinkStream(completed_orders): %v", err)
		}
	}
}

// Metadata travels as the feeder's Meta-* headers (keys encoded as subject
// tokens, values kept on one line), readable with eventmsg's rules; the
// correlation_id entry also as Correlation-Id, the cause as Causation-Id.
func TestMsgCarriesMetadataAndCausation(t *testing.T) {
	e := derived.Event{Projection: "p", Partition: "k", Subject: "project.p.k", Generation: 1, Seq: 2, Type: "T",
		CausationID: "event-41", Metadata: map[string]string{"correlation_id": "c-1", "user id": "ü", "note": "two\nlines"}}
	m := e.Msg(e.Subject)
	for h, want := range map[string]string{contract.HeaderCausationID: "event-41", contract.HeaderCorrelationID: "c-1",
		"Meta-correlation_id": "c-1", "Meta-user%20id": "ü"} {
		if got := m.Header.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
	got := map[string]string{}
	for k, v := range m.Header {
		if key, val, ok := eventmsg.MetaEntry(k, v[0]); ok {
			got[key] = val
		}
	}
	if !maps.Equal(got, e.Metadata) {
		t.Fatalf("metadata read back %q, want %q", got, e.Metadata)
	}
	for _, v := range m.Header {
		if strings.ContainsAny(v[0], "\r\n") {
			t.Fatalf("header value %q spans lines", v[0])
		}
	}
	// Without metadata: no such headers.
	plain := derived.Event{Projection: "p", Partition: "k", Type: "T"}.Msg("project.p.k")
	for k := range plain.Header {
		if strings.HasPrefix(k, "Meta-") || k == contract.HeaderCorrelationID || k == contract.HeaderCausationID {
			t.Fatalf("header %s on an event without metadata", k)
		}
	}
}

// Targets lists the own stream unless LinkOnly, then every link once;
// an existing stream jetproj did not create is refused unless the link
// opts in by name, and is then never changed.
func TestTargets(t *testing.T) {
	ctx := context.Background()
	_, js := devtest.Connect(t, devtest.NATS(t))
	tr := derived.NewTracker(js)
	e := derived.Event{Projection: "p", Partition: "k", Subject: "project.p.k", Type: "T",
		Links: []derived.Link{{Stream: "a"}, {Stream: "b"}, {Stream: "a"}}}
	to, err := tr.Targets(ctx, "PROJECT_P", e, 1)
	want := []derived.Target{{"PROJECT_P", "project.p.k"}, {"a", "a.p.k"}, {"b", "b.p.k"}}
	if err != nil || !slices.Equal(to, want) {
		t.Fatalf("Targets = %v, %v; want %v", to, err, want)
	}
	e.LinkOnly = true
	if to, err = tr.Targets(ctx, "PROJECT_P", e, 1); err != nil || !slices.Equal(to, want[1:]) {
		t.Fatalf("LinkOnly: Targets = %v, %v; want %v", to, err, want[1:])
	}
	cfg := jetstream.StreamConfig{Name: "theirs", Subjects: []string{"theirs.>"}, MaxAge: time.Hour}
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	e.Links = []derived.Link{{Stream: "theirs"}}
	if _, err := tr.Targets(ctx, "PROJECT_P", e, 1); !errors.Is(err, derived.ErrNotLinkStream) {
		t.Fatalf("a foreign stream without opt-in: %v; want ErrNotLinkStream", err)
	}
	e.Links = []derived.Link{{Stream: "theirs", Existing: true}}
	if to, err = tr.Targets(ctx, "PROJECT_P", e, 1); err != nil || !slices.Equal(to, []derived.Target{{"theirs", "theirs.p.k"}}) {
		t.Fatalf("opted in: %v, %v", to, err)
	}
	s, err := js.Stream(ctx, "theirs")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config; got.MaxAge != time.Hour || got.Description != "" {
		t.Fatalf("theirs changed: max age %v, description %q", got.MaxAge, got.Description)
	}
}
