package emitter_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

const traceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

// depositWithMeta publishes a deposit whose metadata carries a correlation
// id, a tenant, a source and a trace context; it returns its position.
func (b *bundle) depositWithMeta(t *testing.T, wallet string, amount int64) int64 {
	t.Helper()
	b.pos++
	b.ver[wallet]++
	md := eventstore.Metadata{}
	for k, v := range map[string]string{"correlation_id": "c-" + wallet, "tenant": "t1", "source": "app", "traceparent": traceParent} {
		md[k], _ = json.Marshal(v)
	}
	m, err := eventmsg.New("events", eventstore.Event{Position: b.pos, TransactionID: uint64(b.pos), AggregateType: "wallet", AggregateID: wallet,
		Version: b.ver[wallet], Type: "MoneyWasAddedToWallet", Payload: []byte(fmt.Sprintf(`{"amount":%d}`, amount)), RecordedAt: time.Now(), Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	return b.pos
}

type lastPos struct{ Pos int64 }

// metaLinks emits, per deposit, a Deposited event with metadata of its own
// on its stream, one Audited event linked (only) to audit_a and audit_b,
// named twice, and one Shared event linked only to the existing stream
// theirs; its flush hook emits Flushed.
func metaLinks(opts ...projection.Option) *projection.Projection[lastPos] {
	p := projection.New[lastPos]("meta_links", append([]projection.Option{projection.FromAggregates("wallet")}, opts...)...)
	projection.On(p, func(_ context.Context, c *projection.Context[lastPos], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Pos = e.Position
		body := map[string]int64{"pos": e.Position}
		if err := c.Emit("Deposited", body, projection.Metadata(map[string]string{"source": "projector"})); err != nil {
			return err
		}
		if err := c.LinkTo("audit_a", "Audited", body, projection.Link("audit_b", "audit_a"), projection.LinkOnly()); err != nil {
			return err
		}
		return c.Emit("Shared", body, projection.LinkExisting("theirs"), projection.LinkOnly())
	})
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[lastPos]) error {
		return c.Emit("Flushed", map[string]int64{"pos": c.State.Pos})
	})
	return p
}

// streamMsgs reads every message of a stream (nil when it does not exist).
func streamMsgs(t *testing.T, js jetstream.JetStream, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// checkMetaLinks waits until every stream holds what metaLinks derives from
// the deposits at positions (wallet by position) and checks each message's
// metadata and causation. It fails on a message seen twice on a stream or
// on a stream holding an event type that does not belong there.
func checkMetaLinks(t *testing.T, js jetstream.JetStream, deposits map[int64]string) {
	t.Helper()
	want := map[string]string{contract.ProjectionStream("meta_links"): "Deposited", "audit_a": "Audited", "audit_b": "Audited", "theirs": "Shared"}
	devtest.Eventually(t, 60*time.Second, func() error {
		for stream, typ := range want {
			got := map[int64]bool{}
			for _, m := range streamMsgs(t, js, stream) {
				et := m.Header.Get(contract.HeaderEventType)
				if et == "Flushed" && stream == contract.ProjectionStream("meta_links") {
					continue
				}
				if et != typ {
					t.Fatalf("%s holds a %s event (%s): want only %s", stream, et, m.Subject, typ)
				}
				var body struct{ Pos int64 }
				if err := json.Unmarshal(m.Data, &body); err != nil {
					t.Fatal(err)
				}
				if got[body.Pos] {
					t.Fatalf("%s holds the %s of position %d twice", stream, typ, body.Pos)
				}
				got[body.Pos] = true
			}
			if len(got) != len(deposits) {
				return fmt.Errorf("%s holds %d %s events, want %d", stream, len(got), typ, len(deposits))
			}
		}
		return nil
	})
	flushed := map[string]int64{}
	for stream := range want {
		for _, m := range streamMsgs(t, js, stream) {
			var body struct{ Pos int64 }
			_ = json.Unmarshal(m.Data, &body)
			h := m.Header
			wallet := deposits[body.Pos]
			source := "app"
			if h.Get(contract.HeaderEventType) == "Deposited" {
				source = "projector" // its own metadata wins
			}
			for k, v := range map[string]string{
				contract.HeaderCausationID: contract.EventMsgID(body.Pos), contract.HeaderCorrelationID: "c-" + wallet,
				contract.HeaderSourcePosition: strconv.FormatInt(body.Pos, 10),
				"Meta-correlation_id":         "c-" + wallet, "Meta-tenant": "t1", "Meta-source": source,
			} {
				if got := h.Get(k); got != v {
					t.Errorf("%s %s of position %d: header %s = %q, want %q", stream, h.Get(contract.HeaderEventType), body.Pos, k, got, v)
				}
			}
			if v := h.Get("Meta-traceparent"); v != "" {
				t.Errorf("%s: the source's trace context was carried over as metadata: %q", stream, v)
			}
			if h.Get(contract.HeaderEventType) == "Flushed" {
				flushed[wallet] = max(flushed[wallet], body.Pos)
			}
		}
	}
	// The flush hook's events answer each partition's last event.
	last := map[string]int64{}
	for pos, w := range deposits {
		last[w] = max(last[w], pos)
	}
	for w, pos := range last {
		if flushed[w] != pos {
			t.Errorf("wallet %s: last Flushed answers position %d, want %d", w, flushed[w], pos)
		}
	}
}

// TestDerivedMetadataAndLinks: through the outbox and the emitter, derived
// events carry their source event's metadata (their own entries winning),
// its id as Causation-Id and its correlation_id as Correlation-Id; events
// linked to several streams with LinkOnly reach each of those once and
// never the projection's own stream; an existing stream jetproj did not
// create takes links only when named with LinkExisting, and is not changed.
// A crash between publish and delete (the rows relayed again by a new
// emitter) duplicates nothing on any target.
func TestDerivedMetadataAndLinks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	theirs := jetstream.StreamConfig{Name: "theirs", Subjects: []string{"theirs.>"}, MaxAge: time.Hour}
	if _, err := b.js.CreateStream(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	deposits := map[int64]string{}
	for i := range 12 {
		w := fmt.Sprintf("w%d", i%3)
		deposits[b.depositWithMeta(t, w, int64(i+1))] = w
	}
	p := metaLinks(projection.Postgres(b.pool))
	b.projector(t, p)
	// The rows, once all written, are kept to be relayed a second time.
	devtest.Eventually(t, 30*time.Second, func() error {
		var n int
		if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox WHERE event_type = 'Shared'`).Scan(&n); err != nil {
			return err
		}
		if n != len(deposits) {
			return fmt.Errorf("%d Shared rows in the outbox", n)
		}
		return nil
	})
	if _, err := b.pool.Exec(ctx, `CREATE TABLE outbox_copy AS SELECT * FROM jetproj.outbox`); err != nil {
		t.Fatal(err)
	}
	b.relayAll(t, b.newEmitter(t))
	checkMetaLinks(t, b.js, deposits)
	if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox SELECT * FROM outbox_copy`); err != nil {
		t.Fatal(err)
	}
	b.relayAll(t, b.newEmitter(t))
	checkMetaLinks(t, b.js, deposits)
	s, err := b.js.Stream(ctx, "theirs")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config; got.MaxAge != time.Hour || got.Description != "" {
		t.Fatalf("stream theirs changed: max age %v, description %q", got.MaxAge, got.Description)
	}
}

// TestOutboxFromBeforeVersion6: an outbox of schema version 5 is migrated
// in place; its rows (one link in link_to, no metadata) are relayed as
// before, to the projection's stream and to the linked one.
func TestOutboxFromBeforeVersion6(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	st := projector.NewPGStore(b.pool, "old_rows")
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `ALTER TABLE jetproj.outbox DROP COLUMN links, DROP COLUMN link_only, DROP COLUMN metadata, DROP COLUMN causation_id;
UPDATE jetproj.schema_version SET version = 5`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, generation, emit_seq, event_type, payload, link_to, source_seq, source_position)
VALUES ('old_rows', 'wallet/w1', 'project.old_rows.wallet.w1', 'old_rows:0:wallet/w1:1', 0, 1, 'Old', '{}', 'old_link', 7, 7)`); err != nil {
		t.Fatal(err)
	}
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: contract.ProjectionStream("old_rows"), Subjects: []string{contract.ProjectionSubjects("old_rows")}}); err != nil {
		t.Fatal(err)
	}
	b.relayAll(t, b.newEmitter(t))
	for _, stream := range []string{contract.ProjectionStream("old_rows"), "old_link"} {
		ms := streamMsgs(t, b.js, stream)
		if len(ms) != 1 || ms[0].Header.Get(contract.HeaderEventType) != "Old" {
			t.Fatalf("%s holds %d messages, want the old row's", stream, len(ms))
		}
		if h := ms[0].Header; h.Get(contract.HeaderCausationID) != "" || h.Get(nats.MsgIdHdr) != "old_rows:0:wallet/w1:1" {
			t.Fatalf("%s: headers %v", stream, h)
		}
	}
}
