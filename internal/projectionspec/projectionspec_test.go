package projectionspec_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/projection"
)

type Deposited struct{ Amount int64 }

type Balance struct{ Cents int64 }

func define(name string, opts ...projection.Option) *projection.Projection[Balance] {
	p := projection.New[Balance](name, opts...)
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[Deposited]) error {
		c.State.Cents += e.Data.Amount
		return nil
	})
	return p
}

// What the options set reaches the runtime, defaults applied.
func TestOf(t *testing.T) {
	t.Parallel()
	d := projectionspec.Of(define("wallets", projection.FromAggregates("wallet")))
	if d.Name() != "wallets" || d.Kind() != projectionspec.Partitioned || d.Validate() != nil || d.IsInline() || d.CustomSource() != nil {
		t.Fatalf("name %q kind %v validate %v inline %v source %v", d.Name(), d.Kind(), d.Validate(), d.IsInline(), d.CustomSource())
	}
	s := d.Settings()
	if s.BatchSize != 500 || s.CatchUpBatchSize != 4000 || s.MaxAttempts != 5 || s.BackoffMin != 100*time.Millisecond ||
		s.BackoffMax != 30*time.Second || s.Slots != 64 || s.Mode != projectionspec.EventDriven || s.WriteEvery != 5*time.Second || s.Postgres {
		t.Fatalf("default settings %+v", s)
	}
	if sc := d.SourceConfig(); sc.Stream != "EVENTS" || len(sc.Subjects) != 1 || sc.Subjects[0] != "events.wallet.*" || d.AggregatePrefix() != "events" {
		t.Fatalf("source %+v, prefix %q", sc, d.AggregatePrefix())
	}
	if _, ok := d.Partitions().(projection.AggregatePartitions); !ok {
		t.Fatalf("partitions %T", d.Partitions())
	}
	if !d.Handles("Deposited") || d.Handles("Withdrawn") {
		t.Fatal("Handles")
	}
	if h := d.Hooks(); h.Init != nil || h.Reset != nil || h.Delete != nil || h.ResetPartition != nil {
		t.Fatal("hooks set without options")
	}
	if projectionspec.Of(d).Name() != "wallets" {
		t.Fatal("a Spec is a Definer")
	}

	hook := func(context.Context, pgx.Tx) error { return nil }
	g := projectionspec.Of(define("totals", projection.FromAggregates("wallet"), projection.Global(), projection.Postgres(nil),
		projection.BatchSize(50), projection.Polling(time.Minute), projection.ManualStart(), projection.NotLive(),
		projection.OnInit(hook), projection.OnDelete(hook)))
	s = g.Settings()
	if g.Kind() != projectionspec.Global || s.Slots != 1 || s.BatchSize != 50 || s.CatchUpBatchSize != 50 ||
		s.Mode != projectionspec.Polling || s.Interval != time.Minute || !s.Postgres {
		t.Fatalf("kind %v, settings %+v", g.Kind(), s)
	}
	if manual, notLive := g.Deployment(); !manual || !notLive {
		t.Fatal("Deployment")
	}
	if h := g.Hooks(); h.Init == nil || h.Delete == nil || h.Reset != nil {
		t.Fatal("hooks")
	}
	if _, ok := g.Partitions().(projection.GlobalPartitions); !ok {
		t.Fatalf("partitions %T", g.Partitions())
	}

	sub := projectionspec.Of(define("stage", projection.FromSubjects("PROJECT_X", "project.x.>")))
	key, err := sub.Partitions().Partition(projection.Message{Subject: "project.x.wallet.w-1"})
	if err != nil || key != "wallet.w-1" || sub.AggregatePrefix() != "" {
		t.Fatalf("key %q (%v), prefix %q", key, err, sub.AggregatePrefix())
	}
}

// Apply, Flush and the state run the typed handlers on the untyped
// partition context.
func TestApply(t *testing.T) {
	t.Parallel()
	d := projectionspec.Of(define("wallets", projection.FromAggregates("wallet")))
	st, err := d.DecodeState([]byte(`{"Cents":40}`))
	if err != nil {
		t.Fatal(err)
	}
	pc := &projectionspec.PartitionContext{Key: "wallet/w-1", State: st}
	for _, m := range []projection.Meta{{Type: "Deposited", Raw: []byte(`{"Amount":2}`)}, {Type: "Other"}} {
		if err := d.Apply(context.Background(), pc, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Flush(context.Background(), pc); err != nil {
		t.Fatal(err)
	}
	if got := pc.State.(*Balance).Cents; got != 42 {
		t.Fatalf("cents %d, want 42", got)
	}
	if zero, err := d.DecodeState(nil); err != nil || *zero.(*Balance) != (Balance{}) || *d.NewState().(*Balance) != (Balance{}) {
		t.Fatalf("zero state %v (%v)", zero, err)
	}
	if _, err := d.DecodeState([]byte(`[]`)); err == nil {
		t.Fatal("a state that does not decode is no error")
	}
}
