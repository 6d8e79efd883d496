package projector_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
)

type Totals struct {
	Events int   `json:"events"`
	Cents  int64 `json:"cents"`
	// LastSeq proves stream order: every event has a higher sequence.
	LastSeq uint64 `json:"last_seq"`
}

func totals(name string, opts ...projection.Option) *projection.Projection[Totals] {
	p := projection.New[Totals](name, append([]projection.Option{projection.FromAggregates("wallet"), projection.Global()}, opts...)...)
	projection.OnAny(p, func(_ context.Context, c *projection.Context[Totals], m projection.Meta) error {
		if m.Sequence <= c.State.LastSeq {
			return fmt.Errorf("sequence %d after %d", m.Sequence, c.State.LastSeq)
		}
		c.State.LastSeq = m.Sequence
		c.State.Events++
		var amount int64
		if _, err := fmt.Sscanf(string(m.Raw), `{"amount":%d}`, &amount); err == nil {
			switch m.Type {
			case "MoneyWasAddedToWallet":
				c.State.Cents += amount
			case "MoneyWasWithdrawnFromWallet":
				c.State.Cents -= amount
			}
		}
		return nil
	})
	return p
}

func (b *bundle) foldTotals() Totals {
	b.mu.Lock()
	defer b.mu.Unlock()
	var t Totals
	for _, bal := range b.fold {
		t.Events += bal.Count
		t.Cents += bal.Cents
	}
	return t
}

func (b *bundle) waitTotals(t *testing.T, name string, within time.Duration) {
	t.Helper()
	devtest.Eventually(t, within, func() error {
		got := b.states(t, name)["global"]
		var tot Totals
		if err := jsonUnmarshal(got.State, &tot); err != nil && len(got.State) > 0 {
			return err
		}
		want := b.foldTotals()
		if tot.Events != want.Events || tot.Cents != want.Cents {
			return fmt.Errorf("totals %+v, want %+v", tot, want)
		}
		return nil
	})
}

// TestGlobalBesidePartitioned runs a global and a partitioned projection of
// the same events side by side, on two replicas: the global one runs on one
// replica only, sees stream order, and agrees with the sum of the
// partitioned one.
func TestGlobalBesidePartitioned(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.publishWallets(t, 100, 5)
	r1 := b.run(t, "r1", totals("wallet_totals"), walletBalance("wallet_balance"))
	r2 := b.run(t, "r2", totals("wallet_totals"), walletBalance("wallet_balance"))
	b.waitTotals(t, "wallet_totals", 30*time.Second)
	b.waitFold(t, "wallet_balance", 30*time.Second)
	owners := 0
	for _, r := range []*running{r1, r2} {
		for _, st := range r.p.Statuses() {
			if st.Projection == "wallet_totals" && len(st.Slots) > 0 {
				owners++
			}
		}
	}
	if owners != 1 {
		t.Fatalf("the global projection runs on %d replicas, want 1", owners)
	}
	// Sum of the partitioned states equals the global total.
	var sum int64
	for _, r := range b.states(t, "wallet_balance") {
		var bal Balance
		_ = jsonUnmarshal(r.State, &bal)
		sum += bal.Cents
	}
	if want := b.foldTotals().Cents; sum != want {
		t.Fatalf("partitioned sum %d, global %d", sum, want)
	}
	// The global projection's replica dies: the other takes over.
	r1.kill(t)
	b.publishWallets(t, 20, 2)
	b.waitTotals(t, "wallet_totals", 30*time.Second)
}

// TestStreamingFromAnotherStream reads any JetStream subjects: here a
// stream of the test's own, partitioned by subject.
func TestStreamingFromAnotherStream(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	type Count struct{ N int }
	p := projection.New[Count]("order_counts", projection.FromSubjects("ORDERS", "orders.>"))
	projection.OnAny(p, func(_ context.Context, c *projection.Context[Count], m projection.Meta) error {
		c.State.N++
		return nil
	})
	for i := range 30 {
		if _, err := b.js.Publish(ctx, fmt.Sprintf("orders.created.o%d", i%3), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	b.run(t, "r1", p)
	devtest.Eventually(t, 20*time.Second, func() error {
		got := b.states(t, "order_counts")
		for i := range 3 {
			var c Count
			_ = jsonUnmarshal(got[fmt.Sprintf("o%d", i)].State, &c)
			if c.N != 10 {
				return fmt.Errorf("o%d: %d events, want 10 (%d partitions)", i, c.N, len(got))
			}
		}
		return nil
	})
}

// TestPolling runs a projection on an interval.
func TestPolling(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.publishWallets(t, 20, 3)
	b.run(t, "r1", totals("wallet_totals", projection.Polling(200*time.Millisecond)))
	b.waitTotals(t, "wallet_totals", 20*time.Second)
	b.publishWallets(t, 5, 1)
	b.waitTotals(t, "wallet_totals", 20*time.Second)
}

// TestPollingDrainsABacklogAtOneTick: a tick takes everything that
// arrived, batch after batch (it took one batch per interval: 2,000 events
// in batches of 20 every second would take 100 s); and between ticks the
// projection does not look (events written one by one over two intervals
// are handled in a few batches, not one each).
func TestPollingDrainsABacklogAtOneTick(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	b.publishWallets(t, 200, 9)
	_, reg := b.runWithRegistry(t, "r1", walletBalance("wallet_polled", projection.Polling(time.Second), projection.BatchSize(20)))
	b.waitFold(t, "wallet_polled", 20*time.Second)
	before, _ := histogram(t, reg, "jetproj_projector_batch_messages")
	pace := time.NewTicker(25 * time.Millisecond) // pacing the writes, not synchronising
	defer pace.Stop()
	for i := range 80 {
		<-pace.C
		b.publish(t, fmt.Sprintf("w%d", i%200), "MoneyWasAddedToWallet", `{"amount":1}`)
	}
	b.waitFold(t, "wallet_polled", 20*time.Second)
	if after, _ := histogram(t, reg, "jetproj_projector_batch_messages"); after-before > 20 {
		t.Fatalf("%d batches for 80 events written over 2 s with a 1 s interval: the projection did not wait for its ticks", after-before)
	}
}

// TestFromStreamReadsASecondFeeder: a second feeder publishes to its own
// stream and subject prefix (FEEDER_STREAM, FEEDER_SUBJECT_PREFIX); a
// projection reads it with FromAggregates and FromStream, in either order
// of the options, and also with FromSubjects and AggregatePartitions. A
// poisoned partition is retried from that stream (its messages are read
// alone by subject), then skipped.
func TestFromStreamReadsASecondFeeder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVENTS_EU", Subjects: []string{"eu.>"}, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	fold := map[string]int64{}
	for v := int64(1); v <= 4; v++ {
		for i := range 10 {
			id := fmt.Sprintf("eu-%d", i)
			typ, payload := "MoneyWasAddedToWallet", fmt.Sprintf(`{"amount":%d}`, 10*v)
			if id == "eu-3" && v == 2 {
				payload = `{"amount":-1}` // withdrawn below: poison
				typ = "MoneyWasWithdrawnFromWallet"
			} else {
				fold["wallet/"+id] += 10 * v
			}
			m, err := eventmsg.New("eu", eventstore.Event{Position: v*100 + int64(i), TransactionID: uint64(v*100 + int64(i)), AggregateType: "wallet",
				AggregateID: id, Version: v, Type: typ, Payload: []byte(payload), RecordedAt: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.js.PublishMsg(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	retries := projection.Retries(2, 10*time.Millisecond, 20*time.Millisecond)
	defs := []*projection.Projection[Balance]{
		walletBalance("eu_a", retries, projection.FromStream("EVENTS_EU", "eu")),
		walletBalance("eu_b", projection.FromStream("EVENTS_EU", "eu"), retries),
		walletBalance("eu_c", retries, projection.FromSubjects("EVENTS_EU", "eu.wallet.*"), projection.Partitions(projection.AggregatePartitions{})),
	}
	// walletBalance adds FromAggregates("wallet") first; eu_c must not mix
	// it with FromSubjects.
	if err := defs[2].Def().Validate(); err == nil {
		t.Fatal("FromAggregates with FromSubjects is no error")
	}
	defs[2] = projection.New[Balance]("eu_c", retries, projection.FromSubjects("EVENTS_EU", "eu.wallet.*"), projection.Partitions(projection.AggregatePartitions{}))
	projection.On(defs[2], func(_ context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Cents += e.Data.Amount
		return nil
	})
	projection.On(defs[2], func(_ context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasWithdrawnFromWallet]) error {
		if e.Data.Amount < 0 {
			return errors.New("negative withdrawal")
		}
		c.State.Cents -= e.Data.Amount
		return nil
	})
	for _, d := range defs {
		if err := d.Def().Validate(); err != nil {
			t.Fatalf("%s: %v", d.Def().Name(), err)
		}
		b.run(t, "r1", d)
	}
	for _, d := range defs {
		name := d.Def().Name()
		devtest.Eventually(t, 20*time.Second, func() error {
			got := b.states(t, name)
			if got["wallet/eu-3"].Parked == nil {
				return fmt.Errorf("%s: eu-3 not parked: %+v", name, got["wallet/eu-3"])
			}
			return nil
		})
		if err := b.admin().Skip(ctx, d, "wallet/eu-3"); err != nil {
			t.Fatal(err)
		}
		devtest.Eventually(t, 20*time.Second, func() error {
			got := b.states(t, name)
			for k, want := range fold {
				var bal Balance
				_ = jsonUnmarshal(got[k].State, &bal)
				if bal.Cents != want {
					return fmt.Errorf("%s: %s has %d cents, want %d", name, k, bal.Cents, want)
				}
			}
			return nil
		})
	}
}

// lastToken places a message in the partition named by its subject's last
// token: multi.a.k and multi.b.k are both partition k.
type lastToken struct{}

func (lastToken) Partition(m projection.Message) (string, error) {
	return m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], nil
}

// TestPartitionOfSeveralSubjectsLosesNothingOnRetry: a custom
// PartitionProvider puts the messages of two subjects in one partition.
// Its retry read only the first subject it saw and lost the other's
// events (issue 14); now such a partition is read again from the stream.
func TestPartitionOfSeveralSubjectsLosesNothingOnRetry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "MULTI", Subjects: []string{"multi.>"}, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	var poison atomic.Bool
	poison.Store(true)
	type Sum struct{ N int }
	p := projection.New[Sum]("multi_sums", projection.FromSubjects("MULTI", "multi.>"), projection.Partitions(lastToken{}),
		projection.Retries(2, 10*time.Millisecond, 20*time.Millisecond))
	projection.OnAny(p, func(_ context.Context, c *projection.Context[Sum], m projection.Meta) error {
		if string(m.Raw) == "poison" && poison.Load() {
			return errors.New("poison")
		}
		c.State.N++
		return nil
	})
	publish := func(subj, body string) {
		if _, err := b.js.Publish(ctx, subj, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		publish(fmt.Sprintf("multi.a.k%d", i%2), "x")
		publish(fmt.Sprintf("multi.b.k%d", i%2), "x")
	}
	publish("multi.a.k0", "poison")
	for i := range 5 {
		publish(fmt.Sprintf("multi.b.k%d", i%2), "x")
		publish(fmt.Sprintf("multi.a.k%d", i%2), "x")
	}
	b.run(t, "r1", p)
	devtest.Eventually(t, 20*time.Second, func() error {
		if got := b.states(t, "multi_sums")["k0"]; got.Parked == nil {
			return fmt.Errorf("k0 not parked: %+v", got)
		}
		return nil
	})
	poison.Store(false) // the fix
	if err := b.admin().Retry(ctx, p, "k0"); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 20*time.Second, func() error {
		got := b.states(t, "multi_sums")
		for k, want := range map[string]int{"k0": 13, "k1": 8} {
			var s Sum
			_ = jsonUnmarshal(got[k].State, &s)
			if s.N != want {
				return fmt.Errorf("%s: %d events applied, want %d", k, s.N, want)
			}
		}
		return nil
	})
}

// TestGlobalPoisonRetryAndSkip: a global projection's only partition
// parks on a poison event (nothing of its batch is applied), a
// retry after the fix applies it and everything after it, and a skip
// passes over the next poison event alone.
func TestGlobalPoisonRetryAndSkip(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	var broken atomic.Bool
	broken.Store(true)
	type Seen struct {
		N      int   `json:"n"`
		Amount int64 `json:"amount"`
	}
	p := projection.New[Seen]("global_poison", projection.FromAggregates("wallet"), projection.Global(),
		projection.Retries(2, 10*time.Millisecond, 20*time.Millisecond))
	projection.On(p, func(_ context.Context, c *projection.Context[Seen], e projection.Event[MoneyWasAddedToWallet]) error {
		switch {
		case e.Data.Amount == 13 && broken.Load():
			return errors.New("unlucky until fixed")
		case e.Data.Amount == 666:
			return errors.New("poison for good")
		}
		c.State.N++
		c.State.Amount += e.Data.Amount
		return nil
	})
	parked := func(event int64) {
		t.Helper()
		devtest.Eventually(t, 20*time.Second, func() error {
			r := b.states(t, "global_poison")[projection.GlobalPartition]
			if r.Parked == nil || r.Parked.EventType != "MoneyWasAddedToWallet" {
				return fmt.Errorf("not parked on the event of %d: %+v", event, r.Parked)
			}
			return nil
		})
	}
	seen := func(n int, amount int64) {
		t.Helper()
		devtest.Eventually(t, 20*time.Second, func() error {
			var s Seen
			_ = jsonUnmarshal(b.states(t, "global_poison")[projection.GlobalPartition].State, &s)
			if s.N != n || s.Amount != amount {
				return fmt.Errorf("%+v, want %d events, %d in all", s, n, amount)
			}
			return nil
		})
	}
	for i := range 10 {
		b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", `{"amount":1}`)
	}
	b.publish(t, "w1", "MoneyWasAddedToWallet", `{"amount":13}`)
	for i := range 5 {
		b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", `{"amount":100}`)
	}
	b.run(t, "r1", p)
	parked(13)
	seen(0, 0) // a partition's batch is all or nothing: it stays before it
	broken.Store(false)
	if err := b.admin().Retry(ctx, p, projection.GlobalPartition); err != nil {
		t.Fatal(err)
	}
	seen(16, 10+13+500)
	b.publish(t, "w2", "MoneyWasAddedToWallet", `{"amount":666}`)
	b.publish(t, "w3", "MoneyWasAddedToWallet", `{"amount":7}`)
	parked(666)
	if err := b.admin().Skip(ctx, p, projection.GlobalPartition); err != nil {
		t.Fatal(err)
	}
	seen(17, 10+13+500+7)
}

// TestConsumerHoldsABoundedPayload: with large messages and a handler that
// does not keep up, the consumer holds at most 32 MiB for the loop (it held
// as many messages as two batches take: here, all of them).
func TestConsumerHoldsABoundedPayload(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t)
	ctx := context.Background()
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{Name: "BIG", Subjects: []string{"big.>"}, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("x"), 900<<10)
	for i := range 120 {
		if _, err := b.js.Publish(ctx, fmt.Sprintf("big.p.k%d", i), body); err != nil {
			t.Fatal(err)
		}
	}
	gate := make(chan struct{})
	p := projection.New[struct{}]("big_payloads", projection.FromSubjects("BIG", "big.>"))
	projection.OnAny(p, func(ctx context.Context, _ *projection.Context[struct{}], _ projection.Meta) error {
		select {
		case <-gate:
		case <-ctx.Done():
		}
		return nil
	})
	_, reg := b.runWithRegistry(t, "r1", p)
	defer close(gate)
	gauge := func() int { return counter(t, reg, "jetproj_projector_buffered_bytes", "big_payloads") }
	devtest.Eventually(t, 20*time.Second, func() error {
		if n := gauge(); n < 30<<20 {
			return fmt.Errorf("%d bytes buffered", n)
		}
		return nil
	})
	// Measuring an interval, not synchronising: the consumer has every
	// chance to take more, and must not.
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if n := gauge(); n > 33<<20 {
			t.Fatalf("%d MiB buffered for the loop, want at most 32 MiB and a message", n>>20)
		}
	}
}
