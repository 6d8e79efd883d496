package subject_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/jetproj/jetproj/pkg/subject"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestEventAndParseEvent(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 200)
	tests := []struct {
		typ, id, want string
	}{
		{"wallet", "123", "events.wallet.123"},
		{"wallet", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "events.wallet.3f2504e0-4f89-11d3-9a0c-0305e82c3301"},
		{"order.line", "a*b>c", "events.order%2Eline.a%2Ab%3Ec"},
		{"", "", "events.~.~"},
		{"ticket", "ann@example.com", "events.ticket.ann%40example%2Ecom"},
		{"café", "1 2", "events.caf%C3%A9.1%202"},
		{"wallet", long, "events.wallet." + hashed(long)},
	}
	for _, tt := range tests {
		got := subject.Event(tt.typ, tt.id)
		if got != tt.want {
			t.Errorf("Event(%q, %q)\n got %q\nwant %q", tt.typ, tt.id, got, tt.want)
		}
		if !server.IsValidLiteralSubject(got) || !server.IsValidSubject(got) {
			t.Errorf("Event(%q, %q) = %q is not a valid literal subject", tt.typ, tt.id, got)
		}
		typ, id, err := subject.ParseEvent(got)
		if tt.id == long {
			if !errors.Is(err, subject.ErrHashedToken) {
				t.Errorf("ParseEvent(%q) err = %v, want ErrHashedToken", got, err)
			}
			continue
		}
		if err != nil || typ != tt.typ || id != tt.id {
			t.Errorf("ParseEvent(%q) = %q, %q, %v; want %q, %q, nil", got, typ, id, err, tt.typ, tt.id)
		}
	}
}

func TestParseEventErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want error
	}{
		{"", subject.ErrInvalidSubject},
		{"events", subject.ErrInvalidSubject},
		{"events.wallet", subject.ErrInvalidSubject},
		{"events.wallet.1.2", subject.ErrInvalidSubject},
		{"eventsx.wallet.1", subject.ErrInvalidSubject},
		{"project.wallet.1", subject.ErrInvalidSubject},
		{"events..1", subject.ErrInvalidToken},
		{"events.wallet.", subject.ErrInvalidToken},
		{"events.wallet.*", subject.ErrInvalidToken},
		{"events.wallet.%2e", subject.ErrInvalidToken},
		{"events." + hashed("t") + ".1", subject.ErrHashedToken},
	}
	for _, tt := range tests {
		typ, id, err := subject.ParseEvent(tt.in)
		if !errors.Is(err, tt.want) {
			t.Errorf("ParseEvent(%q) = %q, %q, %v; want error %v", tt.in, typ, id, err, tt.want)
		}
	}
}

func TestEventFilter(t *testing.T) {
	t.Parallel()
	for typ, want := range map[string]string{
		"wallet":     "events.wallet.*",
		"order.line": "events.order%2Eline.*",
		"":           "events.~.*",
	} {
		got := subject.EventFilter(typ)
		if got != want {
			t.Errorf("EventFilter(%q) = %q, want %q", typ, got, want)
		}
		if !server.IsValidSubject(got) {
			t.Errorf("EventFilter(%q) = %q is not a valid subject", typ, got)
		}
	}
}

func TestEventWithPrefix(t *testing.T) {
	t.Parallel()
	good := []struct{ prefix, want string }{
		{"events", "events.wallet.a%2Eb"},
		{"tenant1.events", "tenant1.events.wallet.a%2Eb"},
		{"ÄÖ.x-y_z", "ÄÖ.x-y_z.wallet.a%2Eb"},
	}
	for _, tt := range good {
		got, err := subject.EventWithPrefix(tt.prefix, "wallet", "a.b")
		if err != nil || got != tt.want {
			t.Errorf("EventWithPrefix(%q, …) = %q, %v; want %q, nil", tt.prefix, got, err, tt.want)
		}
		typ, id, err := subject.ParseEventWithPrefix(tt.prefix, got)
		if err != nil || typ != "wallet" || id != "a.b" {
			t.Errorf("ParseEventWithPrefix(%q, %q) = %q, %q, %v", tt.prefix, got, typ, id, err)
		}
	}
	bad := []string{"", ".", "a.", ".a", "a..b", "*", ">", "a.*", "a.>", "a b", "a\tb", "a\x00b", "a\x7fb", "\xff", "a\u00a0b"}
	for _, prefix := range bad {
		got, err := subject.EventWithPrefix(prefix, "wallet", "1")
		if !errors.Is(err, subject.ErrInvalidSubject) || got != "" {
			t.Errorf("EventWithPrefix(%q, …) = %q, %v; want ErrInvalidSubject", prefix, got, err)
		}
		if _, _, err := subject.ParseEventWithPrefix(prefix, "x.wallet.1"); !errors.Is(err, subject.ErrInvalidSubject) {
			t.Errorf("ParseEventWithPrefix(%q, …) err = %v; want ErrInvalidSubject", prefix, err)
		}
	}
	for _, tt := range good {
		if !server.IsValidLiteralSubject(tt.prefix) {
			t.Errorf("test bug: %q is not a valid literal subject", tt.prefix)
		}
	}
}

func TestProjection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		suffix []string
		want   string
	}{
		{"wallet_balance", []string{"wallet", "123"}, "project.wallet_balance.wallet.123"},
		{"ticket_counts", []string{"TicketWasClosed"}, "project.ticket_counts.TicketWasClosed"},
		{"order_fulfilment", []string{"order", "o.1", ""}, "project.order_fulfilment.order.o%2E1.~"},
		{"high_value_wallets", nil, "project.high_value_wallets"},
	}
	for _, tt := range tests {
		got := subject.Projection(tt.name, tt.suffix...)
		if got != tt.want {
			t.Errorf("Projection(%q, %q) = %q, want %q", tt.name, tt.suffix, got, tt.want)
		}
		if !server.IsValidLiteralSubject(got) {
			t.Errorf("Projection(%q, %q) = %q is not a valid literal subject", tt.name, tt.suffix, got)
		}
		name, suffix, err := subject.ParseProjection(got)
		if err != nil || name != tt.name || !slices.Equal(suffix, tt.suffix) {
			t.Errorf("ParseProjection(%q) = %q, %q, %v; want %q, %q", got, name, suffix, err, tt.name, tt.suffix)
		}
	}
	if got := subject.ProjectionFilter("wallet_balance"); got != "project.wallet_balance.>" {
		t.Errorf("ProjectionFilter = %q", got)
	}
	// An invalid name still yields a valid subject, which ParseProjection rejects.
	got := subject.Projection("Bad.Name", "x")
	if got != "project.Bad%2EName.x" || !server.IsValidLiteralSubject(got) {
		t.Errorf("Projection(%q, …) = %q", "Bad.Name", got)
	}
	if _, _, err := subject.ParseProjection(got); !errors.Is(err, subject.ErrInvalidName) {
		t.Errorf("ParseProjection(%q) err = %v, want ErrInvalidName", got, err)
	}
}

func TestParseProjectionErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want error
	}{
		{"", subject.ErrInvalidSubject},
		{"project", subject.ErrInvalidSubject},
		{"events.wallet.1", subject.ErrInvalidSubject},
		{"project.", subject.ErrInvalidName},
		{"project.Wallet.1", subject.ErrInvalidName},
		{"project.wallet_balance.", subject.ErrInvalidToken},
		{"project.wallet_balance.a..b", subject.ErrInvalidToken},
		{"project.wallet_balance.>", subject.ErrInvalidToken},
		{"project.wallet_balance.wallet." + hashed("w"), subject.ErrHashedToken},
	}
	for _, tt := range tests {
		name, suffix, err := subject.ParseProjection(tt.in)
		if !errors.Is(err, tt.want) {
			t.Errorf("ParseProjection(%q) = %q, %q, %v; want error %v", tt.in, name, suffix, err, tt.want)
		}
	}
}

func TestValidName(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"wallet_balance", "a", "_", "0", "ticket_counts2", strings.Repeat("a", subject.MaxNameLen)} {
		if err := subject.ValidName(name); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", name, err)
		}
		if subject.EncodeToken(name) != name {
			t.Errorf("valid name %q is not its own token", name)
		}
	}
	for _, name := range []string{"", "Wallet", "wallet-balance", "wallet.balance", "wallet balance", "*", ">", "é", strings.Repeat("a", subject.MaxNameLen+1)} {
		if err := subject.ValidName(name); !errors.Is(err, subject.ErrInvalidName) {
			t.Errorf("ValidName(%q) = %v, want ErrInvalidName", name, err)
		}
	}
}

// TestSubjectsOnServer publishes to subjects built from awkward identifiers
// on a real (embedded) NATS server, receives them through EventFilter, and
// parses them back.
func TestSubjectsOnServer(t *testing.T) {
	t.Parallel()
	srv, err := server.NewServer(&server.Options{DontListen: true, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(5 * time.Second) {
		t.Fatal("embedded server not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)

	const typ = "ord er.*>"
	ids := []string{"", "1", "a.b", "*", ">", " \t\r\n", "\x00\xff", "日本", "%2E", "~", strings.Repeat(".", 100)}
	msgs := make(chan *nats.Msg, len(ids)+1)
	sub, err := nc.ChanSubscribe(subject.EventFilter(typ), msgs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	// A neighbouring aggregate type must not match the filter.
	if err := nc.Publish(subject.Event("ord", "1"), nil); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if err := nc.Publish(subject.Event(typ, id), []byte(id)); err != nil {
			t.Fatalf("publish %q: %v", subject.Event(typ, id), err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(5 * time.Second)
	for _, id := range ids {
		select {
		case m := <-msgs:
			gotType, gotID, err := subject.ParseEvent(m.Subject)
			if errors.Is(err, subject.ErrHashedToken) {
				if gotType != "" || string(m.Data) != strings.Repeat(".", 100) {
					t.Errorf("unexpected hashed subject %q", m.Subject)
				}
				continue
			}
			if err != nil || gotType != typ || gotID != string(m.Data) || gotID != id {
				t.Errorf("ParseEvent(%q) = %q, %q, %v; want %q, %q", m.Subject, gotType, gotID, err, typ, id)
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %q", subject.Event(typ, id))
		}
	}
	select {
	case m := <-msgs:
		t.Errorf("unexpected message on %q", m.Subject)
	default:
	}
}
