package eventmsg_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

func TestRoundTrip(t *testing.T) {
	e := eventstore.Event{
		Position: 42, TransactionID: 777, AggregateType: "wallet", AggregateID: "a.b c",
		Version: 3, Type: "MoneyWasAddedToWallet", Payload: json.RawMessage(`{"amount":5}`),
		Metadata: eventstore.Metadata{
			"traceparent": json.RawMessage(`"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"`),
			"tenant":      json.RawMessage(`"acme"`),
			"multi.line":  json.RawMessage(`"a\nb"`),
			"n":           json.RawMessage(`7`),
		},
		RecordedAt: time.Date(2026, 11, 22, 8, 0, 0, 123, time.UTC),
	}
	m, err := eventmsg.New("events", e)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "events.wallet.a%2Eb%20c" {
		t.Errorf("subject = %q", m.Subject)
	}
	if got := m.Header.Get(nats.MsgIdHdr); got != "event-42" {
		t.Errorf("msg id = %q", got)
	}
	if got := m.Header.Get("traceparent"); got != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
		t.Errorf("traceparent = %q", got)
	}
	if got := m.Header.Get("Recorded-At"); got != "2026-11-22T08:00:00.000000123Z" {
		t.Errorf("Recorded-At = %q", got)
	}
	for k, vs := range m.Header {
		for _, v := range vs {
			for i := 0; i < len(v); i++ {
				if v[i] < 0x20 {
					t.Errorf("header %s has a control character: %q", k, v)
				}
			}
		}
	}
	got, err := eventmsg.Parse(m)
	if err != nil {
		t.Fatal(err)
	}
	if got.Position != 42 || got.TransactionID != 777 || got.AggregateID != "a.b c" || got.Version != 3 ||
		got.Type != e.Type || !got.RecordedAt.Equal(e.RecordedAt) || string(got.Payload) != `{"amount":5}` {
		t.Errorf("parsed %+v", got)
	}
	want := map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tenant": "acme", "multi.line": "a\nb", "n": "7"}
	for k, v := range want {
		if got.Metadata[k] != v {
			t.Errorf("metadata %q = %q, want %q", k, got.Metadata[k], v)
		}
	}
}

func TestParseRejectsForeignMessages(t *testing.T) {
	_, err := eventmsg.Parse(&nats.Msg{Subject: "events.x.y", Header: nats.Header{}})
	if !errors.Is(err, eventmsg.ErrNotEvent) {
		t.Fatalf("got %v, want ErrNotEvent", err)
	}
}

// BenchmarkNew measures building one event's message, as the feeder does
// for every event: the contract headers without metadata (most events) and
// with a traceparent.
func BenchmarkNew(b *testing.B) {
	e := eventstore.Event{
		Position: 123456, TransactionID: 98765, AggregateType: "wallet", AggregateID: "3f2b9c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b",
		Version: 7, Type: "MoneyWasAddedToWallet", Payload: json.RawMessage(`{"amount":5}`),
		RecordedAt: time.Date(2026, 12, 6, 8, 0, 0, 123456000, time.UTC),
	}
	b.Run("plain", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := eventmsg.New("events", e); err != nil {
				b.Fatal(err)
			}
		}
	})
	e.Metadata = eventstore.Metadata{"traceparent": json.RawMessage(`"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"`)}
	b.Run("traceparent", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := eventmsg.New("events", e); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkNewFenced is the feeder's message: New with the sequence fence.
func BenchmarkNewFenced(b *testing.B) {
	e := eventstore.Event{
		Position: 123456, TransactionID: 98765, AggregateType: "wallet", AggregateID: "3f2b9c1e-8d4a-4b6e-9f0a-1c2d3e4f5a6b",
		Version: 7, Type: "MoneyWasAddedToWallet", Payload: json.RawMessage(`{"amount":5}`),
		RecordedAt: time.Date(2026, 12, 6, 8, 0, 0, 123456000, time.UTC),
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := eventmsg.NewFenced("events", e, 123455); err != nil {
			b.Fatal(err)
		}
	}
}

// TestNewFenced checks that the fenced message is New's message plus the
// JetStream header that sequence fencing uses.
func TestNewFenced(t *testing.T) {
	e := eventstore.Event{
		Position: 42, TransactionID: 777, AggregateType: "wallet", AggregateID: "w1", Version: 3,
		Type: "MoneyWasAddedToWallet", Payload: json.RawMessage(`{"amount":5}`),
		Metadata:   eventstore.Metadata{"traceparent": json.RawMessage(`"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"`)},
		RecordedAt: time.Date(2026, 11, 22, 8, 0, 0, 123, time.UTC),
	}
	plain, err := eventmsg.New("events", e)
	if err != nil {
		t.Fatal(err)
	}
	fenced, err := eventmsg.NewFenced("events", e, 18446744073709551615)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := contract.HeaderExpectedLastSequence, jetstream.ExpectedLastSeqHeader; got != want {
		t.Errorf("header name: got %q, want %q", got, want)
	}
	if got, want := fenced.Header.Get(jetstream.ExpectedLastSeqHeader), "18446744073709551615"; got != want {
		t.Errorf("fence: got %q, want %q", got, want)
	}
	delete(fenced.Header, jetstream.ExpectedLastSeqHeader)
	if fenced.Subject != plain.Subject || string(fenced.Data) != string(plain.Data) || len(fenced.Header) != len(plain.Header) {
		t.Fatalf("fenced message differs: got %+v, want %+v", fenced, plain)
	}
	for k, v := range plain.Header {
		if got := fenced.Header[k]; len(got) != 1 || got[0] != v[0] {
			t.Errorf("header %s: got %q, want %q", k, got, v)
		}
	}
	if got, want := plain.Header.Get("Recorded-At"), "2026-11-22T08:00:00.000000123Z"; got != want {
		t.Errorf("Recorded-At: got %q, want %q", got, want)
	}
}
