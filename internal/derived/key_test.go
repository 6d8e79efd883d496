package derived_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/derived"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
)

// keys differ only in bytes headers cannot carry, in '%' and '~', or in
// their length.
var keys = []string{"wallet/a b", "wallet/a\nb", "wallet/a\r\nb", "wallet/a\tb", "wallet/a\rb", " wallet/a b", "wallet/a b ",
	"wallet/a%20b", "wallet/a%0Ab", "~", "", "wallet/~", "wallet/é", "wallet/\xff", "wallet/a:b", "wallet/a\x00b",
	strings.Repeat("x", derived.MaxKeyTokenLen), strings.Repeat("x", derived.MaxKeyTokenLen+1), strings.Repeat(" ", 200), strings.Repeat("\n", 200)}

func TestKeyEncodingIsReversibleAndHeaderSafe(t *testing.T) {
	tokens := map[string]string{}
	for _, k := range keys {
		esc := derived.EscapeKey(k)
		if got, err := derived.UnescapeKey(esc); err != nil || got != k {
			t.Errorf("UnescapeKey(EscapeKey(%q)) = %q, %v", k, got, err)
		}
		tok := derived.KeyToken(k)
		if len(tok) > derived.MaxKeyTokenLen || len(tok) == 0 {
			t.Errorf("KeyToken(%q) = %q: %d bytes", k, tok, len(tok))
		}
		for _, s := range []string{esc, tok} {
			if strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r >= 0x7f }) >= 0 {
				t.Errorf("%q encodes to %q, not header-safe", k, s)
			}
		}
		if prev, ok := tokens[tok]; ok {
			t.Errorf("keys %q and %q share the token %q", prev, k, tok)
		}
		tokens[tok] = k
	}
	if got := derived.EscapeKey("wallet/w-1:x.y"); got != "wallet/w-1:x.y" {
		t.Errorf("an ordinary key changed: %q", got)
	}
	if got := derived.MsgID("wallet_balance", 2, "wallet/w1", 7); got != "wallet_balance:2:wallet/w1:7" {
		t.Errorf("MsgID of an ordinary key: %q", got)
	}
	for _, bad := range []string{"a b", "a%2", "a%zz", "a%41", "a%0a", "a~"} {
		if _, err := derived.UnescapeKey(bad); !errors.Is(err, derived.ErrInvalidKey) {
			t.Errorf("UnescapeKey(%q) = %v; want ErrInvalidKey", bad, err)
		}
	}
}

func FuzzKeyEncoding(f *testing.F) {
	for _, k := range keys {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, k string) {
		if got, err := derived.UnescapeKey(derived.EscapeKey(k)); err != nil || got != k {
			t.Fatalf("UnescapeKey(EscapeKey(%q)) = %q, %v", k, got, err)
		}
		if tok := derived.KeyToken(k); len(tok) > derived.MaxKeyTokenLen {
			t.Fatalf("KeyToken(%q): %d bytes", k, len(tok))
		}
	})
}

// Each key's derived event is stored: their message ids, through a real
// server's header handling, stay distinct.
func TestEventsOfLookAlikeKeysAreAllStored(t *testing.T) {
	ctx := context.Background()
	_, js := devtest.Connect(t, devtest.NATS(t))
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PROJECT_P", Subjects: []string{"project.p.>"}, AllowDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	tr := derived.NewTracker(js)
	for i, k := range keys {
		e := derived.Event{Projection: "p", Partition: k, Generation: 1, Seq: 1, Type: "T", Payload: []byte(`{}`)}
		msg := e.Msg(fmt.Sprintf("project.p.k%d", i))
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		if ack.Duplicate {
			t.Errorf("%q: discarded as a duplicate of sequence %d", k, ack.Sequence)
		}
		if err := tr.Acked(ctx, msg, ack); err != nil {
			t.Errorf("%q: %v", k, err)
		}
	}
	for i, k := range keys {
		m, err := s.GetLastMsgForSubject(ctx, fmt.Sprintf("project.p.k%d", i))
		if err != nil {
			t.Fatalf("%q: %v", k, err)
		}
		if got, err := derived.UnescapeKey(m.Header.Get(contract.HeaderPartition)); err != nil || got != k {
			t.Errorf("%q: Partition header %q gives %q, %v", k, m.Header.Get(contract.HeaderPartition), got, err)
		}
	}
}

// An acknowledgement marked Duplicate is accepted when the stream holds the
// event itself at that sequence (a re-publish), and reported as
// ErrUnexpectedDuplicate otherwise: another message with the same id, or
// the original deleted since.
func TestAckedTellsAnUnexpectedDuplicate(t *testing.T) {
	ctx := context.Background()
	_, js := devtest.Connect(t, devtest.NATS(t))
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PROJECT_P", Subjects: []string{"project.p.>"}, AllowDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	tr := derived.NewTracker(js)
	e := derived.Event{Projection: "p", Partition: "k", Generation: 1, Seq: 3, Type: "T", Payload: []byte(`{}`)}
	publish := func(m *nats.Msg) error {
		t.Helper()
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return tr.Acked(ctx, m, ack)
	}
	if err := publish(e.Msg("project.p.k")); err != nil {
		t.Fatalf("first publish: %v", err)
	}
	if err := publish(e.Msg("project.p.k")); err != nil {
		t.Fatalf("re-publish of the event the stream holds: %v", err)
	}
	if m, _ := tr.Last(ctx, "PROJECT_P", "project.p.k"); m != e.Mark() {
		t.Fatalf("mark after re-publish %+v, want %+v", m, e.Mark())
	}
	other := e
	other.Partition, other.MsgID = "other", e.Msg("x").Header.Get(nats.MsgIdHdr)
	var de *derived.DuplicateError
	if err := publish(other.Msg("project.p.other")); !errors.Is(err, derived.ErrUnexpectedDuplicate) || !errors.As(err, &de) || de.Sequence != 1 {
		t.Fatalf("an event sharing another's id: %v; want a DuplicateError at sequence 1", err)
	}
	if tr.Known("project.p.other") {
		t.Fatal("the discarded event's mark was recorded")
	}
	if err := s.DeleteMsg(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := publish(e.Msg("project.p.k")); !errors.Is(err, derived.ErrUnexpectedDuplicate) {
		t.Fatalf("re-publish of a deleted event within the window: %v; want ErrUnexpectedDuplicate", err)
	}
}

// Prefetch settles many subjects in a few requests: those the stream holds
// get their marks, the others an empty mark.
func TestPrefetchReadsManySubjects(t *testing.T) {
	ctx := context.Background()
	_, js := devtest.Connect(t, devtest.NATS(t))
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PROJECT_P", Subjects: []string{"project.p.>"}, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	var subjs []string
	for i := range 1500 {
		subj := fmt.Sprintf("project.p.k%d", i)
		subjs = append(subjs, subj)
		if i%2 == 0 {
			e := derived.Event{Projection: "p", Partition: fmt.Sprint(i), Generation: 1, Seq: uint64(i + 1), Type: "T", Payload: []byte(`{}`)}
			if _, err := js.PublishMsg(ctx, e.Msg(subj)); err != nil {
				t.Fatal(err)
			}
		}
	}
	tr := derived.NewTracker(js)
	if err := tr.Prefetch(ctx, "PROJECT_P", subjs); err != nil {
		t.Fatal(err)
	}
	if tr.Len() != len(subjs) {
		t.Fatalf("%d of %d subjects settled", tr.Len(), len(subjs))
	}
	for i, subj := range subjs {
		want := derived.Mark{}
		if i%2 == 0 {
			want = derived.Mark{Gen: 1, Seq: uint64(i + 1)}
		}
		if m, _ := tr.Last(ctx, "PROJECT_P", subj); m != want {
			t.Fatalf("%s: %+v, want %+v", subj, m, want)
		}
	}
	// No stream: nothing settled, no error.
	tr.Forget()
	if err := tr.Prefetch(ctx, "PROJECT_NONE", subjs[:3]); err != nil || tr.Len() != 0 {
		t.Fatalf("missing stream: %v, %d settled", err, tr.Len())
	}
}
