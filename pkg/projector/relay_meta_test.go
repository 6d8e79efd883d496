package projector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
)

// publishWithMeta appends a deposit whose metadata carries a correlation
// id, a tenant, a source and a trace context; it returns its position.
func (b *bundle) publishWithMeta(t *testing.T, wallet string, amount int64) int64 {
	t.Helper()
	b.mu.Lock()
	b.pos++
	b.ver[wallet]++
	pos, ver := b.pos, b.ver[wallet]
	b.mu.Unlock()
	md := eventstore.Metadata{}
	for k, v := range map[string]string{"correlation_id": "c-" + wallet, "tenant": "t1", "source": "app",
		"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"} {
		md[k], _ = json.Marshal(v)
	}
	m, err := eventmsg.New("events", eventstore.Event{Position: pos, TransactionID: uint64(pos), AggregateType: "wallet", AggregateID: wallet,
		Version: ver, Type: "MoneyWasAddedToWallet", Payload: []byte(fmt.Sprintf(`{"amount":%d}`, amount)), RecordedAt: time.Now(), Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	return pos
}

type lastPos struct{ Pos int64 }

// kvMetaLinks (KV state) emits, per deposit, a Deposited event with
// metadata of its own on its stream, one Audited event linked only to
// kv_audit_a and kv_audit_b (named twice), and one Shared event linked
// only to the existing stream kv_theirs; its flush hook emits Flushed.
func kvMetaLinks() *projection.Projection[lastPos] {
	p := projection.New[lastPos]("kv_meta", projection.FromAggregates("wallet"), projection.BatchSize(5))
	projection.On(p, func(_ context.Context, c *projection.Context[lastPos], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Pos = e.Position
		body := map[string]int64{"pos": e.Position}
		if err := c.Emit("Deposited", body, projection.Metadata(map[string]string{"source": "projector"})); err != nil {
			return err
		}
		if err := c.Emit("Audited", body, projection.Link("kv_audit_a", "kv_audit_b", "kv_audit_a"), projection.LinkOnly()); err != nil {
			return err
		}
		return c.LinkTo("kv_theirs", "Shared", body, projection.LinkExisting("kv_theirs"), projection.LinkOnly())
	})
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[lastPos]) error {
		return c.Emit("Flushed", map[string]int64{"pos": c.State.Pos})
	})
	return p
}

// checkKVMetaLinks waits until every stream holds what kvMetaLinks derives
// from deposits (wallet by position), each once and only where it belongs,
// and checks the messages' metadata and causation.
func (b *bundle) checkKVMetaLinks(t *testing.T, deposits map[int64]string) {
	t.Helper()
	ctx := context.Background()
	own := contract.ProjectionStream("kv_meta")
	want := map[string]string{own: "Deposited", "kv_audit_a": "Audited", "kv_audit_b": "Audited", "kv_theirs": "Shared"}
	read := func(stream string) []*jetstream.RawStreamMsg {
		s, err := b.js.Stream(ctx, stream)
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
	pos := func(m *jetstream.RawStreamMsg) int64 {
		var body struct{ Pos int64 }
		if err := json.Unmarshal(m.Data, &body); err != nil {
			t.Fatal(err)
		}
		return body.Pos
	}
	devtest.Eventually(t, 60*time.Second, func() error {
		for stream, typ := range want {
			got := map[int64]bool{}
			for _, m := range read(stream) {
				et := m.Header.Get(contract.HeaderEventType)
				if et == "Flushed" && stream == own {
					continue
				}
				if et != typ {
					t.Fatalf("%s holds a %s event (%s): want only %s", stream, et, m.Subject, typ)
				}
				if got[pos(m)] {
					t.Fatalf("%s holds the %s of position %d twice", stream, typ, pos(m))
				}
				got[pos(m)] = true
			}
			if len(got) != len(deposits) {
				return fmt.Errorf("%s holds %d %s events, want %d", stream, len(got), typ, len(deposits))
			}
		}
		return nil
	})
	for stream := range want {
		for _, m := range read(stream) {
			p, h := pos(m), m.Header
			wallet := deposits[p]
			source := "app"
			if h.Get(contract.HeaderEventType) == "Deposited" {
				source = "projector"
			}
			for k, v := range map[string]string{
				contract.HeaderCausationID: contract.EventMsgID(p), contract.HeaderCorrelationID: "c-" + wallet,
				contract.HeaderSourcePosition: strconv.FormatInt(p, 10),
				"Meta-correlation_id":         "c-" + wallet, "Meta-tenant": "t1", "Meta-source": source,
			} {
				if got := h.Get(k); got != v {
					t.Errorf("%s %s of position %d: header %s = %q, want %q", stream, h.Get(contract.HeaderEventType), p, k, got, v)
				}
			}
			if v := h.Get("Meta-traceparent"); v != "" {
				t.Errorf("%s: the source's trace context was carried over as metadata: %q", stream, v)
			}
		}
	}
}

// TestKVDerivedMetadataAndLinks: a projection with KV state, whose derived
// events the projector publishes, carries metadata and causation like the
// emitter; LinkOnly events linked to several streams reach each once and
// never the projection's own stream; the existing stream named with
// LinkExisting takes them unchanged. A replica that takes the slots over
// (its marks read afresh from every target) publishes nothing twice.
func TestKVDerivedMetadataAndLinks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "kv_theirs", Subjects: []string{"kv_theirs.>"}, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	deposits := map[int64]string{}
	for i := range 12 {
		w := fmt.Sprintf("w%d", i%3)
		deposits[b.publishWithMeta(t, w, int64(i+1))] = w
	}
	r := b.run(t, "r1", kvMetaLinks())
	b.checkKVMetaLinks(t, deposits)
	r.kill(t)
	b.run(t, "r2", kvMetaLinks())
	for i := range 6 {
		w := fmt.Sprintf("w%d", i%4)
		deposits[b.publishWithMeta(t, w, 1)] = w
	}
	b.checkKVMetaLinks(t, deposits)
	s, err := b.js.Stream(ctx, "kv_theirs")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config; got.MaxAge != time.Hour || got.Description != "" {
		t.Fatalf("stream kv_theirs changed: max age %v, description %q", got.MaxAge, got.Description)
	}
}
