package projector_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/derived"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

type balanceChanged struct {
	Cents int64 `json:"cents"`
	Count int   `json:"count"`
}

// emittingWallets is the KV wallet projection (walletBalance) whose flush hook emits the
// balance once per batch, and links a wallet's eleventh event.
func emittingWallets(name string, opts ...projection.Option) *projection.Projection[Balance] {
	p := walletBalance(name, opts...)
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[Balance]) error {
		if c.State.Count == 11 {
			return c.LinkTo("kv_links", "WalletBalanceWasChanged", balanceChanged{c.State.Cents, c.State.Count})
		}
		return c.Emit("WalletBalanceWasChanged", balanceChanged{c.State.Cents, c.State.Count})
	})
	return p
}

type emitted struct {
	id, subject string
	mark        derived.Mark
	body        balanceChanged
}

// streamEvents reads every message of a stream.
func (b *bundle) streamEvents(t *testing.T, stream string) []emitted {
	t.Helper()
	ctx := context.Background()
	s, err := b.js.Stream(ctx, stream)
	if err != nil {
		return nil
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []emitted
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		e := emitted{id: m.Header.Get(nats.MsgIdHdr), subject: m.Subject, mark: derived.MarkOf(m.Header)}
		_ = json.Unmarshal(m.Data, &e.body)
		out = append(out, e)
	}
	return out
}

// checkOnceInOrder fails on a derived event seen twice or a partition's
// events out of order or with a gap; it returns the last event per subject.
func checkOnceInOrder(t *testing.T, es []emitted) map[string]emitted {
	t.Helper()
	seen := map[string]bool{}
	last := map[string]emitted{}
	for _, e := range es {
		if seen[e.id] {
			t.Fatalf("derived event %s published twice", e.id)
		}
		seen[e.id] = true
		if prev, ok := last[e.subject]; ok && !prev.mark.Before(e.mark) {
			t.Fatalf("%s: %+v after %+v", e.subject, e.mark, prev.mark)
		}
		last[e.subject] = e
	}
	return last
}

// waitDerived waits until every wallet's last derived event on the
// projection's stream carries its final balance.
func (b *bundle) waitDerived(t *testing.T, name string) map[string]emitted {
	t.Helper()
	var last map[string]emitted
	devtest.Eventually(t, 60*time.Second, func() error {
		last = checkOnceInOrder(t, b.streamEvents(t, contract.ProjectionStream(name)))
		b.mu.Lock()
		defer b.mu.Unlock()
		for k, want := range b.fold {
			e := last[projector.EmitSubject(name, k)]
			if e.body.Cents != want.Cents || e.body.Count != want.Count {
				return fmt.Errorf("%s: last derived %+v, want %d cents after %d events (%d subjects)", k, e.body, want.Cents, want.Count, len(last))
			}
		}
		return nil
	})
	return last
}

func TestKVStateProjectionEmitsOncePerBatchInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.publishWallets(t, 100, 10)
	_, reg := b.runWithRegistry(t, "r1", emittingWallets("kv_emit", projection.BatchSize(50)))
	b.waitFold(t, "kv_emit", 30*time.Second)
	b.waitDerived(t, "kv_emit")
	// Live events: one derived event per batch, after its write.
	for i := range 10 {
		b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", `{"amount":5}`)
	}
	b.waitFold(t, "kv_emit", 30*time.Second)
	last := b.waitDerived(t, "kv_emit")
	// Each wallet's events are numbered 1, 2, … in its generation.
	for k := range b.fold {
		e := last[projector.EmitSubject("kv_emit", k)]
		if e.id != fmt.Sprintf("kv_emit:%d:%s:%d", e.mark.Gen, k, e.mark.Seq) {
			t.Fatalf("%s: message id %q for mark %+v", k, e.id, e.mark)
		}
	}
	// The linked stream got each wallet's eleventh event, once.
	links := checkOnceInOrder(t, b.streamEvents(t, "kv_links"))
	if len(links) != 100 {
		t.Fatalf("linked stream holds %d wallets, want 100", len(links))
	}
	for _, e := range links {
		if e.body.Count != 11 {
			t.Fatalf("linked %+v", e)
		}
	}
	emittedN := counter(t, reg, "jetproj_projector_events_emitted_total", "kv_emit")
	own := len(b.streamEvents(t, contract.ProjectionStream("kv_emit")))
	if emittedN != own+100 {
		t.Fatalf("metric counts %d published, streams hold %d + 100 linked", emittedN, own)
	}
	// Records keep at most their last batch's events, all published.
	for _, rec := range b.states(t, "kv_emit") {
		for _, e := range rec.Outbox {
			if l := last[projector.EmitSubject("kv_emit", rec.Key)]; l.mark.Before(derived.Mark{Gen: e.Generation, Seq: e.Seq}) {
				t.Fatalf("%s: record holds %+v, never published (stream at %+v)", rec.Key, e, l.mark)
			}
		}
		if len(rec.Outbox) > 1 {
			t.Fatalf("%s: record keeps %d events", rec.Key, len(rec.Outbox))
		}
	}
}

// A projector that wrote a record but died before publishing its derived
// events leaves them in the record; the next owner publishes those the
// stream does not hold, once.
func TestKVStateDerivedEventsSurviveACrashBeforePublishing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.publishWallets(t, 1, 0) // w0 opened: stream sequence 1
	def := emittingWallets("kv_crash")
	// What the dead projector left: w0 handled up to seq 1, its state and
	// two derived events in the record, the first of them published.
	if err := b.admin().Init(ctx, def); err != nil {
		t.Fatal(err)
	}
	store := projector.NewKVStore(b.js, "jetproj_state_kv_crash", 1)
	if err := store.Init(ctx); err != nil {
		t.Fatal(err)
	}
	pending := []projector.Pending{
		{Generation: 0, Seq: 1, Type: "WalletBalanceWasChanged", Payload: json.RawMessage(`{"cents":0,"count":1}`), SourceSeq: 1},
		{Generation: 0, Seq: 2, Type: "WalletBalanceWasChanged", Payload: json.RawMessage(`{"cents":0,"count":1}`), SourceSeq: 1, LinkTo: "kv_links2"},
	}
	batch, err := store.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slot := projector.SlotOf("wallet/w0", 64)
	batch.Put(slot, 0, projector.Record{Key: "wallet/w0", Seq: 1, State: json.RawMessage(`{"owner":"o0","cents":0,"count":1}`), Emitted: 2, Outbox: pending})
	for s := range 64 {
		batch.Watermark(s, 0, 1)
	}
	if _, err := batch.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	first := derived.Event{Projection: "kv_crash", Partition: "wallet/w0", Subject: projector.EmitSubject("kv_crash", "wallet/w0"),
		MsgID: "kv_crash:0:wallet/w0:1", Generation: 0, Seq: 1, Type: "WalletBalanceWasChanged", Payload: pending[0].Payload}
	if _, err := b.js.PublishMsg(ctx, first.Msg(first.Subject)); err != nil {
		t.Fatal(err)
	}
	// The projector takes the slot over and publishes the second only.
	b.run(t, "r1", def)
	devtest.Eventually(t, 30*time.Second, func() error {
		own := checkOnceInOrder(t, b.streamEvents(t, contract.ProjectionStream("kv_crash")))
		links := b.streamEvents(t, "kv_links2")
		if e := own[first.Subject]; e.mark.Seq != 2 || len(links) != 1 {
			return fmt.Errorf("own stream ends at %+v, linked stream holds %d", e.mark, len(links))
		}
		return nil
	})
	if n := len(b.streamEvents(t, contract.ProjectionStream("kv_crash"))); n != 2 {
		t.Fatalf("own stream holds %d events, want 2", n)
	}
	// A deposit continues the numbering.
	b.publish(t, "w0", "MoneyWasAddedToWallet", `{"amount":3}`)
	devtest.Eventually(t, 30*time.Second, func() error {
		own := checkOnceInOrder(t, b.streamEvents(t, contract.ProjectionStream("kv_crash")))
		if e := own[first.Subject]; e.mark.Seq != 3 || e.body.Cents != 3 {
			return fmt.Errorf("last derived %+v %+v", e.mark, e.body)
		}
		return nil
	})

}

func TestKVStateEmissionThroughKills(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	b.publishWallets(t, 100, 5)
	def := func() projection.Definer { return emittingWallets("kv_kill", projection.BatchSize(20)) }
	r1 := b.run(t, "r1", def())
	devtest.Eventually(t, 30*time.Second, func() error {
		if len(b.streamEvents(t, contract.ProjectionStream("kv_kill"))) == 0 {
			return fmt.Errorf("nothing emitted yet")
		}
		return nil
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range 5 {
			for i := range 100 {
				b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", fmt.Sprintf(`{"amount":%d}`, 200+d))
			}
		}
	}()
	r1.kill(t)
	r2 := b.run(t, "r2", def())
	<-done
	r2.kill(t)
	b.run(t, "r3", def())
	b.waitFold(t, "kv_kill", 60*time.Second)
	b.waitDerived(t, "kv_kill")
	links := checkOnceInOrder(t, b.streamEvents(t, "kv_links"))
	for _, e := range links {
		if e.body.Count != 11 {
			t.Fatalf("linked %+v", e)
		}
	}
}

// depositEmitter emits from its handler, once per deposit, with the count
// of the wallet's events so far.
func depositEmitter(name string) *projection.Projection[Balance] {
	p := projection.New[Balance](name, projection.FromAggregates("wallet"), projection.BatchSize(1000))
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[WalletOpened]) error {
		c.State.Owner = e.Data.Owner
		c.State.Count++
		return nil
	})
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Cents += e.Data.Amount
		c.State.Count++
		return c.Emit("Deposited", balanceChanged{c.State.Cents, c.State.Count})
	})
	return p
}

// A batch that replays what a reset projection had seen and goes on with
// new events emits for the new events only (G5): events emitted while
// handling replayed messages are dropped although the batch ends past the
// replay bound.
func TestReplayingBatchEmitsForNewEventsOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const wallets, deposits, more = 20, 5, 3
	def := depositEmitter("kv_replay")
	b.publishWallets(t, wallets, deposits)
	r := b.run(t, "r1", def)
	b.waitFold(t, "kv_replay", 30*time.Second)
	devtest.Eventually(t, 30*time.Second, func() error {
		if n := len(b.streamEvents(t, contract.ProjectionStream("kv_replay"))); n != wallets*deposits {
			return fmt.Errorf("%d derived events, want %d", n, wallets*deposits)
		}
		return nil
	})
	r.stop(t)
	if err := b.admin().Reset(ctx, def); err != nil {
		t.Fatal(err)
	}
	// New deposits are in the stream before a replica starts: its first
	// batch per wallet holds the replayed events and the new ones.
	for d := range more {
		for i := range wallets {
			b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", fmt.Sprintf(`{"amount":%d}`, 1000+d))
		}
	}
	b.run(t, "r2", def)
	b.waitFold(t, "kv_replay", 30*time.Second)
	var after []emitted
	devtest.Eventually(t, 30*time.Second, func() error {
		after = after[:0]
		for _, e := range b.streamEvents(t, contract.ProjectionStream("kv_replay")) {
			if e.mark.Gen > 0 { // the reset's generation
				after = append(after, e)
			}
		}
		if len(after) < wallets*more {
			return fmt.Errorf("%d derived events after the reset, want %d", len(after), wallets*more)
		}
		return nil
	})
	checkOnceInOrder(t, after)
	for _, e := range after {
		if e.body.Count <= 1+deposits {
			t.Errorf("%s: derived event %+v answers a replayed event (count %d ≤ %d)", e.subject, e.body, e.body.Count, 1+deposits)
		}
	}
	if len(after) != wallets*more {
		t.Errorf("%d derived events after the reset, want %d", len(after), wallets*more)
	}
}

// Rebuilding one partition replays its events without emitting again;
// its new events are emitted as usual.
func TestPartitionRebuildEmitsForNewEventsOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const wallets, deposits = 10, 5
	def := depositEmitter("kv_part_replay")
	b.publishWallets(t, wallets, deposits)
	b.run(t, "r1", def)
	b.waitFold(t, "kv_part_replay", 30*time.Second)
	own := contract.ProjectionStream("kv_part_replay")
	devtest.Eventually(t, 30*time.Second, func() error {
		if n := len(b.streamEvents(t, own)); n != wallets*deposits {
			return fmt.Errorf("%d derived events, want %d", n, wallets*deposits)
		}
		return nil
	})
	if err := b.admin().RebuildPartition(ctx, def, "wallet/w3"); err != nil {
		t.Fatal(err)
	}
	b.publish(t, "w3", "MoneyWasAddedToWallet", `{"amount":7}`)
	b.publish(t, "w3", "MoneyWasAddedToWallet", `{"amount":8}`)
	b.waitFold(t, "kv_part_replay", 30*time.Second)
	subj := projector.EmitSubject("kv_part_replay", "wallet/w3")
	var w3 []emitted
	devtest.Eventually(t, 30*time.Second, func() error {
		w3 = w3[:0]
		for _, e := range b.streamEvents(t, own) {
			if e.subject == subj {
				w3 = append(w3, e)
			}
		}
		if len(w3) == 0 || w3[len(w3)-1].body.Count != 1+deposits+2 {
			return fmt.Errorf("w3: %d derived events, the last not yet for event %d", len(w3), 1+deposits+2)
		}
		return nil
	})
	checkOnceInOrder(t, w3)
	if len(w3) != deposits+2 {
		for _, e := range w3 {
			t.Logf("%s %+v", e.id, e.body)
		}
		t.Fatalf("w3 has %d derived events, want %d: the rebuild emitted again", len(w3), deposits+2)
	}
}

// A reset publishes the derived events that records still hold and the
// streams do not, before it removes the records: they were committed with
// their state, and the replay after the reset emits nothing.
func TestResetPublishesWhatRecordsStillHold(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.publishWallets(t, 1, 0)
	def := emittingWallets("kv_reset_left")
	if err := b.admin().Init(ctx, def); err != nil {
		t.Fatal(err)
	}
	store := projector.NewKVStore(b.js, "jetproj_state_kv_reset_left", 1)
	if err := store.Init(ctx); err != nil {
		t.Fatal(err)
	}
	pending := []projector.Pending{
		{Generation: 0, Seq: 1, Type: "WalletBalanceWasChanged", Payload: json.RawMessage(`{"cents":0,"count":1}`), SourceSeq: 1},
		{Generation: 0, Seq: 2, Type: "WalletBalanceWasChanged", Payload: json.RawMessage(`{"cents":0,"count":1}`), SourceSeq: 1, LinkTo: "kv_links3"},
	}
	batch, err := store.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	batch.Put(projector.SlotOf("wallet/w0", 64), 0, projector.Record{Key: "wallet/w0", Seq: 1, State: json.RawMessage(`{"count":1}`), Emitted: 2, Outbox: pending})
	if _, err := batch.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	first := derived.Event{Projection: "kv_reset_left", Partition: "wallet/w0", Subject: projector.EmitSubject("kv_reset_left", "wallet/w0"),
		MsgID: "kv_reset_left:0:wallet/w0:1", Generation: 0, Seq: 1, Type: "WalletBalanceWasChanged", Payload: pending[0].Payload}
	if _, err := b.js.PublishMsg(ctx, first.Msg(first.Subject)); err != nil {
		t.Fatal(err)
	}
	if err := projector.NewAdmin(b.js, projector.AdminOptions{Progress: t.Logf}).Reset(ctx, def); err != nil {
		t.Fatal(err)
	}
	own := b.streamEvents(t, contract.ProjectionStream("kv_reset_left"))
	checkOnceInOrder(t, own)
	if len(own) != 2 || own[1].mark.Seq != 2 {
		t.Fatalf("own stream holds %d events (%+v); want the first and, published by the reset, the second", len(own), own)
	}
	if links := b.streamEvents(t, "kv_links3"); len(links) != 1 {
		t.Fatalf("linked stream holds %d events, want 1", len(links))
	}
	if r, err := store.Get(ctx, projector.SlotOf("wallet/w0", 64), "wallet/w0"); err != nil || r != nil {
		t.Fatalf("record after the reset: %+v, %v; want none", r, err)
	}
}

// A partition whose derived event JetStream refuses (here: linked to a
// stream jetproj did not create) waits alone: the other partitions' events
// go on being published, batch after batch; once the cause is gone, the
// waiting events go out in order, each once.
func TestRefusedPartitionWaitsAlone(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const name = "kv_refused"
	p := walletBalance(name, projection.BatchSize(20))
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[Balance]) error {
		if c.State.Owner == "o0" {
			return c.LinkTo("kv_foreign", "WalletBalanceWasChanged", balanceChanged{c.State.Cents, c.State.Count})
		}
		return c.Emit("WalletBalanceWasChanged", balanceChanged{c.State.Cents, c.State.Count})
	})
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "kv_foreign", Subjects: []string{"kv_foreign.>"}}); err != nil {
		t.Fatal(err)
	}
	b.publishWallets(t, 10, 3)
	_, reg := b.runWithRegistry(t, "r1", p)
	// The others' events keep coming, over several batches, while w0's
	// wait in its record.
	for round := range 3 {
		for i := 1; i < 10; i++ {
			b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", fmt.Sprintf(`{"amount":%d}`, round+1))
		}
		devtest.Eventually(t, 30*time.Second, func() error {
			last := checkOnceInOrder(t, b.streamEvents(t, contract.ProjectionStream(name)))
			b.mu.Lock()
			defer b.mu.Unlock()
			for k, want := range b.fold {
				e, ok := last[projector.EmitSubject(name, k)]
				if k == "wallet/w0" {
					if ok {
						return fmt.Errorf("%s: derived event %s published although refused", k, e.id)
					}
					continue
				}
				if e.body.Cents != want.Cents || e.body.Count != want.Count {
					return fmt.Errorf("%s: last derived %+v, want %d cents after %d events", k, e.body, want.Cents, want.Count)
				}
			}
			return nil
		})
	}
	b.waitFold(t, name, 30*time.Second) // w0's read model is not held back
	// w0 is tried again after a growing pause, not with every batch: each
	// attempt asks JetStream for the linked stream, and is refused.
	apiErrors := func() uint64 {
		info, err := b.js.AccountInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.API.Errors
	}
	before := apiErrors()
	for i := range 100 {
		b.publish(t, "w1", "MoneyWasAddedToWallet", fmt.Sprintf(`{"amount":%d}`, i))
		if i%2 == 0 {
			b.waitFold(t, name, 30*time.Second) // batches of their own
		}
	}
	b.waitFold(t, name, 30*time.Second)
	n := apiErrors() - before
	t.Logf("%d refused requests", n)
	if n > 25 {
		t.Fatalf("%d refused requests while w1 went on; want the refused partition paused between attempts", n)
	}
	if n := counter(t, reg, "jetproj_projector_partitions_unpublished", name); n != 1 {
		t.Fatalf("unpublished partitions gauge %d; want 1", n)
	}
	if err := b.js.DeleteStream(ctx, "kv_foreign"); err != nil {
		t.Fatal(err)
	}
	last := b.waitDerived(t, name)
	own := projector.EmitSubject(name, "wallet/w0")
	_, linked, err := derived.LinkTarget("kv_foreign", own)
	if err != nil {
		t.Fatal(err)
	}
	links := checkOnceInOrder(t, b.streamEvents(t, "kv_foreign"))
	if e := links[linked]; e.id != last[own].id || len(links) != 1 {
		t.Fatalf("linked stream holds %v; want w0's last event %s alone", links, last[own].id)
	}
	devtest.Eventually(t, 10*time.Second, func() error {
		if n := counter(t, reg, "jetproj_projector_partitions_unpublished", name); n != 0 {
			return fmt.Errorf("unpublished partitions gauge %d; want 0", n)
		}
		return nil
	})
}

// A partition whose derived events JetStream keeps refusing fails, alone,
// once they outgrow what its record may hold, and is parked with a clear
// error (its record would otherwise outgrow the bucket and fail every
// batch); after the cause is fixed, `retry` resumes it and every event
// goes out once, in order.
func TestUnpublishedBacklogParksThePartition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const name = "kv_backlog"
	pad := strings.Repeat("x", 40<<10)
	p := walletBalance(name, projection.BatchSize(1), projection.Retries(2, 50*time.Millisecond, 100*time.Millisecond))
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[Balance]) error {
		body := struct {
			balanceChanged
			Pad string `json:"pad,omitempty"`
		}{balanceChanged: balanceChanged{c.State.Cents, c.State.Count}}
		if c.State.Owner == "o0" {
			body.Pad = pad
			return c.LinkTo("kv_backlog_link", "WalletBalanceWasChanged", body)
		}
		return c.Emit("WalletBalanceWasChanged", body)
	})
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "kv_backlog_link", Subjects: []string{"kv_backlog_link.>"}}); err != nil {
		t.Fatal(err)
	}
	b.publishWallets(t, 3, 12) // w0: 13 events of 40 KiB each, more than a record keeps
	b.run(t, "r1", p)
	var parked projector.Record
	devtest.Eventually(t, 60*time.Second, func() error {
		st, err := b.admin().Status(ctx, p)
		if err != nil {
			return err
		}
		if len(st.Parked) != 1 {
			return fmt.Errorf("%d parked partitions; want w0's", len(st.Parked))
		}
		parked = st.Parked[0]
		return nil
	})
	if parked.Key != "wallet/w0" || parked.Parked == nil || !strings.Contains(parked.Parked.Error, "wait to be published") {
		t.Fatalf("parked %+v; want wallet/w0 parked for its unpublished derived events", parked)
	}
	// The other wallets are done, their events published.
	devtest.Eventually(t, 30*time.Second, func() error {
		last := checkOnceInOrder(t, b.streamEvents(t, contract.ProjectionStream(name)))
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, k := range []string{"wallet/w1", "wallet/w2"} {
			if e := last[projector.EmitSubject(name, k)]; e.body.Count != b.fold[k].Count {
				return fmt.Errorf("%s: last derived %+v, want count %d", k, e.body, b.fold[k].Count)
			}
		}
		return nil
	})
	if err := b.js.DeleteStream(ctx, "kv_backlog_link"); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		return b.admin().Retry(ctx, p, "wallet/w0")
	})
	b.waitFold(t, name, 30*time.Second)
	b.waitDerived(t, name)
}

// A reset whose leftover derived events JetStream refuses changes nothing:
// no hook runs, the records (the only place holding those events) stay,
// and the projection runs on; once the cause is gone, the reset goes
// through and publishes them.
func TestResetRefusedLeftoversChangeNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.publishWallets(t, 1, 0)
	hookRuns := 0
	def := emittingWallets("kv_reset_refused", projection.OnReset(func(context.Context, pgx.Tx) error {
		hookRuns++
		return nil
	}))
	if err := b.admin().Init(ctx, def); err != nil {
		t.Fatal(err)
	}
	store := projector.NewKVStore(b.js, "jetproj_state_kv_reset_refused", 1)
	if err := store.Init(ctx); err != nil {
		t.Fatal(err)
	}
	batch, err := store.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slot := projector.SlotOf("wallet/w0", 64)
	batch.Put(slot, 0, projector.Record{Key: "wallet/w0", Seq: 1, State: json.RawMessage(`{"count":1}`), Emitted: 1, Outbox: []projector.Pending{
		{Generation: 0, Seq: 1, Type: "WalletBalanceWasChanged", Payload: json.RawMessage(`{"cents":0,"count":1}`), SourceSeq: 1, LinkTo: "kv_reset_foreign"},
	}})
	if _, err := batch.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "kv_reset_foreign", Subjects: []string{"kv_reset_foreign.>"}}); err != nil {
		t.Fatal(err)
	}
	resetErr := projector.NewAdmin(b.js, projector.AdminOptions{Progress: t.Logf}).Reset(ctx, def)
	if resetErr == nil {
		t.Fatal("reset with refused leftovers succeeded; want it refused")
	}
	if hookRuns != 0 {
		t.Fatalf("reset hook ran %d times; want 0", hookRuns)
	}
	if r, err := store.Get(ctx, slot, "wallet/w0"); err != nil || r == nil || len(r.Outbox) != 1 {
		t.Fatalf("record after the refused reset: %+v, %v; want it unchanged", r, err)
	}
	if st, err := b.admin().Status(ctx, def); err != nil || st.State != "active" {
		t.Fatalf("status after the refused reset: %+v, %v; want active", st, err)
	}
	if !strings.Contains(resetErr.Error(), "not reset") {
		t.Fatalf("refused reset says %q; want it to say the projection was not reset", resetErr)
	}
	if err := b.js.DeleteStream(ctx, "kv_reset_foreign"); err != nil {
		t.Fatal(err)
	}
	if err := projector.NewAdmin(b.js, projector.AdminOptions{Progress: t.Logf}).Reset(ctx, def); err != nil {
		t.Fatal(err)
	}
	if hookRuns != 1 {
		t.Fatalf("reset hook ran %d times; want 1", hookRuns)
	}
	if own := b.streamEvents(t, contract.ProjectionStream("kv_reset_refused")); len(own) != 1 {
		t.Fatalf("own stream holds %d events; want the leftover", len(own))
	}
	if links := b.streamEvents(t, "kv_reset_foreign"); len(links) != 1 {
		t.Fatalf("linked stream holds %d events; want the leftover", len(links))
	}
}

// Partition keys that differ only in bytes a header cannot carry (CR, LF,
// tab, leading or trailing space: nats.go turns them into spaces or trims
// them) still get distinct message ids: each partition's derived events
// land, none is discarded as a duplicate of another's, and the Partition
// header gives the key back.
func TestKVStateKeysDifferingInUnsafeBytesEachEmit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	wallets := []string{"a b", "a\nb", "a\r\nb", "a\tb", "a\rb", " a b", "a b "}
	for _, w := range wallets {
		b.publish(t, w, "WalletOpened", `{"owner":"o"}`)
		b.publish(t, w, "MoneyWasAddedToWallet", `{"amount":7}`)
	}
	b.run(t, "r1", emittingWallets("kv_keys"))
	b.waitFold(t, "kv_keys", 30*time.Second)
	last := b.waitDerived(t, "kv_keys")
	s, err := b.js.Stream(context.Background(), contract.ProjectionStream("kv_keys"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range wallets {
		subj := projector.EmitSubject("kv_keys", "wallet/"+w)
		m, err := s.GetLastMsgForSubject(context.Background(), subj)
		if err != nil {
			t.Fatalf("%q: %v", w, err)
		}
		if key, err := derived.UnescapeKey(m.Header.Get(contract.HeaderPartition)); err != nil || key != "wallet/"+w {
			t.Errorf("%q: Partition header %q gives %q, %v", w, m.Header.Get(contract.HeaderPartition), key, err)
		}
		if id := m.Header.Get(nats.MsgIdHdr); id != last[subj].id || strings.ContainsAny(id, " \r\n\t") {
			t.Errorf("%q: message id %q", w, id)
		}
	}
}

// The refused derived events of all partitions together are bounded too:
// with JetStream refusing every partition's events, partitions that emit
// fail with ErrUnpublished once the projection's total passes the bound,
// although each partition alone holds far less than its own bound; after
// the fix, retrying them publishes every event once, in order.
func TestUnpublishedTotalIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const name = "kv_backlog_total"
	pad := strings.Repeat("y", 4<<10)
	p := walletBalance(name, projection.BatchSize(1), projection.Retries(1, 10*time.Millisecond, 10*time.Millisecond))
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[Balance]) error {
		body := struct {
			balanceChanged
			Pad string `json:"pad"`
		}{balanceChanged{c.State.Cents, c.State.Count}, pad}
		return c.LinkTo("kv_total_link", "WalletBalanceWasChanged", body)
	})
	// A stream jetproj did not create: JetStream refuses the links.
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "kv_total_link", Subjects: []string{"kv_total_link.>"}}); err != nil {
		t.Fatal(err)
	}
	b.publishWallets(t, 30, 2) // 90 events of ~4 KiB: ~360 KiB, each partition ~12 KiB
	nc, err := nats.Connect(b.nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	pr, err := projector.New(nc, projector.WithUnpublishedLimit(projector.Options{Replica: "r1", LeaseTTL: 2 * time.Second, Logger: testLogger(t)}, 64<<10), p)
	if err != nil {
		t.Fatal(err)
	}
	run := &running{p: pr, nc: nc, done: make(chan error, 1)}
	rctx, cancel := context.WithCancel(ctx)
	run.cancel = cancel
	go func() { run.done <- pr.Run(rctx) }()
	t.Cleanup(func() { run.stop(t) })
	var parked []projector.Record
	devtest.Eventually(t, 60*time.Second, func() error {
		st, err := b.admin().Status(ctx, p)
		if err != nil {
			return err
		}
		if parked = st.Parked; len(parked) == 0 {
			return errors.New("nothing parked yet")
		}
		return nil
	})
	if !strings.Contains(parked[0].Parked.Error, "in all partitions") {
		t.Fatalf("parked %s with %q; want the projection's total named", parked[0].Key, parked[0].Parked.Error)
	}
	if err := b.js.DeleteStream(ctx, "kv_total_link"); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 60*time.Second, func() error {
		st, err := b.admin().Status(ctx, p)
		if err != nil {
			return err
		}
		for _, rec := range st.Parked {
			if err := b.admin().Retry(ctx, p, rec.Key); err != nil {
				return err
			}
		}
		if len(st.Parked) > 0 {
			return fmt.Errorf("%d partitions parked", len(st.Parked))
		}
		return nil
	})
	b.waitFold(t, name, 30*time.Second)
	b.waitDerived(t, name)
}

// A projector publishing the derived events of partitions whose records it
// loaded without unpublished events, or created, asks the stream nothing
// about their subjects: it knows what they hold. Only a partition loaded
// with events in its record (a previous owner may have published some) has
// its subject's last message read — here w0, which the projector then
// publishes once, after the one the stream held.
func TestKVStateEmissionReadsOnlyUnsureSubjects(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	const name = "kv_seed"
	def := emittingWallets(name, projection.BatchSize(25))
	if err := b.admin().Init(ctx, def); err != nil {
		t.Fatal(err)
	}
	// w0's record as a projector that died after publishing the first of
	// its two events left it.
	b.publishWallets(t, 1, 0)
	store := projector.NewKVStore(b.js, "jetproj_state_"+name, 1)
	if err := store.Init(ctx); err != nil {
		t.Fatal(err)
	}
	pending := []projector.Pending{
		{Seq: 1, Type: "WalletBalanceWasChanged", Payload: json.RawMessage(`{"cents":0,"count":1}`), SourceSeq: 1},
		{Seq: 2, Type: "WalletBalanceWasChanged", Payload: json.RawMessage(`{"cents":0,"count":1}`), SourceSeq: 1},
	}
	batch, err := store.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	batch.Put(projector.SlotOf("wallet/w0", 64), 0, projector.Record{Key: "wallet/w0", Seq: 1, State: json.RawMessage(`{"owner":"o0","cents":0,"count":1}`), Emitted: 2, Outbox: pending})
	for s := range 64 {
		batch.Watermark(s, 0, 1)
	}
	if _, err := batch.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	subj0 := projector.EmitSubject(name, "wallet/w0")
	first := derived.Event{Projection: name, Partition: "wallet/w0", Subject: subj0, MsgID: name + ":0:wallet/w0:1", Seq: 1,
		Type: "WalletBalanceWasChanged", Payload: pending[0].Payload}
	if _, err := b.js.PublishMsg(ctx, first.Msg(subj0)); err != nil {
		t.Fatal(err)
	}
	// Every read of a message of the projection's stream, by whatever API.
	var mu sync.Mutex
	var reads []string
	for _, api := range []string{"$JS.API.DIRECT.GET." + contract.ProjectionStream(name) + ".>", "$JS.API.DIRECT.GET." + contract.ProjectionStream(name),
		"$JS.API.STREAM.MSG.GET." + contract.ProjectionStream(name)} {
		sub, err := b.nc.Subscribe(api, func(m *nats.Msg) {
			mu.Lock()
			reads = append(reads, m.Subject+" "+string(m.Data))
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// 100 more wallets, 3 events each, handled in batches of 25.
	for i := 1; i <= 100; i++ {
		b.publish(t, fmt.Sprintf("w%d", i), "WalletOpened", fmt.Sprintf(`{"owner":"o%d"}`, i))
	}
	for range 2 {
		for i := 1; i <= 100; i++ {
			b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", `{"amount":1}`)
		}
	}
	b.run(t, "r1", def)
	devtest.Eventually(t, 30*time.Second, func() error {
		own := checkOnceInOrder(t, b.streamEvents(t, contract.ProjectionStream(name)))
		if len(own) != 101 || own[subj0].mark.Seq != 2 {
			return fmt.Errorf("own stream: %d subjects, w0 at %+v", len(own), own[subj0].mark)
		}
		for i := 1; i <= 100; i++ {
			if e := own[projector.EmitSubject(name, fmt.Sprintf("wallet/w%d", i))]; e.body.Count != 3 {
				return fmt.Errorf("w%d's last derived event: %+v", i, e.body)
			}
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	// streamEvents reads by sequence (not by subject); the projector's reads
	// are by subject: only w0's.
	var bySubject []string
	for _, r := range reads {
		if strings.Contains(r, "last_by_subj") || strings.Contains(r, "."+contract.ProjectionStream(name)+".") {
			bySubject = append(bySubject, r)
		}
	}
	if len(bySubject) != 1 || !strings.Contains(bySubject[0], "w0") {
		t.Fatalf("reads of a subject's last message: %q; want one, w0's", bySubject)
	}
}
