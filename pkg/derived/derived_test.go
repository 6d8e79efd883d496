package derived_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/derived"
	"github.com/jetproj/jetproj/pkg/devenv/devtest"
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
	for h, want := range map[string]string{"Nats-Msg-Id": e.MsgID, derived.HeaderEventType: e.Type, derived.HeaderPartition: e.Partition,
		derived.HeaderSourceSequence: "40", derived.HeaderSourcePosition: "39", "traceparent": e.TraceParent} {
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
	stream, subj, err := tr.Link(ctx, "linked", "project.p.k", 1)
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
