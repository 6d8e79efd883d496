package projection_test

import (
	"context"
	"fmt"

	"github.com/jetproj/jetproj/pkg/projection"
)

type OrderShipped struct {
	Carrier string `json:"carrier"`
}

type Order struct{ Shipped bool }

// A handler emits a derived event for the projection's own stream and links
// one to a curated stream. A stream name that cannot be one is refused when
// the handler emits, so the partition fails visibly rather than the event
// going nowhere.
func ExampleContext_LinkTo() {
	p := projection.New[Order]("orders", projection.FromAggregates("order"))
	projection.On(p, func(_ context.Context, c *projection.Context[Order], e projection.Event[OrderShipped]) error {
		c.State.Shipped = true
		if err := c.Emit("OrderWasShipped", e.Data); err != nil {
			return err
		}
		return c.LinkTo(e.Data.Carrier, "OrderWasShipped", e.Data)
	})
	d := p.Def()
	for _, carrier := range []string{"shipped_orders", "not a stream"} {
		pc := &projection.PartitionContext{Key: "order/o-1", State: d.NewState()}
		err := d.Apply(context.Background(), pc, projection.Meta{Type: "OrderShipped", Raw: []byte(`{"carrier":"` + carrier + `"}`)})
		fmt.Println(len(pc.Emitted), err != nil)
	}
	// Output:
	// 2 false
	// 1 true
}

// Emit and LinkTo take options: metadata of the derived event's own (on top
// of what it carries over from the source event: its Meta-* entries, its id
// as Causation-Id), and links — here one event linked to two public streams
// and not published on the projection's own stream.
func ExampleLinkOnly() {
	p := projection.New[Order]("orders", projection.FromAggregates("order"))
	projection.On(p, func(_ context.Context, c *projection.Context[Order], e projection.Event[OrderShipped]) error {
		return c.Emit("OrderWasShipped", e.Data,
			projection.WithMetadata(map[string]string{"shipped_by": e.Data.Carrier}),
			projection.Link("shipped_orders", "carrier_feed"),
			projection.LinkOnly())
	})
	d := p.Def()
	pc := &projection.PartitionContext{Key: "order/o-1", State: d.NewState()}
	err := d.Apply(context.Background(), pc, projection.Meta{Type: "OrderShipped", Raw: []byte(`{"carrier":"acme"}`)})
	e := pc.Emitted[0]
	fmt.Println(err, len(pc.Emitted), e.Links, e.LinkOnly, e.Metadata)
	// Output:
	// <nil> 1 [{shipped_orders false} {carrier_feed false}] true map[shipped_by:acme]
}

// statements prints what a handler queues with Context.Exec. In the
// projector it is the batch's PostgreSQL transaction: the statements travel
// together with the commit.
type statements struct{}

func (statements) Queue(sql string, args ...any) { fmt.Println(sql, args) }

type MoneyWasAddedToWallet struct {
	Amount int64 `json:"amount"`
}

type Wallet struct{ Balance int64 }

// A handler of a projection with a PostgreSQL sink writes its read model by
// queueing statements: no round trip per statement, and a statement
// PostgreSQL refuses fails this wallet's partition alone. Without a
// PostgreSQL sink Exec returns ErrNoPostgres.
func ExampleContext_Exec() {
	p := projection.New[Wallet]("wallet_balance", projection.FromAggregates("wallet"))
	projection.On(p, func(_ context.Context, c *projection.Context[Wallet], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Balance += e.Data.Amount
		return c.Exec(`UPDATE wallet_balance SET balance = $2 WHERE wallet_id = $1`, e.AggregateID, c.State.Balance)
	})
	d := p.Def()
	pc := &projection.PartitionContext{Key: "wallet/w-1", State: d.NewState(), Queue: statements{}}
	m := projection.Meta{Type: "MoneyWasAddedToWallet", Raw: []byte(`{"amount":500}`), AggregateID: "w-1"}
	fmt.Println(d.Apply(context.Background(), pc, m))
	pc.Queue = nil
	fmt.Println(d.Apply(context.Background(), pc, m))
	// Output:
	// UPDATE wallet_balance SET balance = $2 WHERE wallet_id = $1 [w-1 500]
	// <nil>
	// projection: Exec needs a PostgreSQL sink (projection.Postgres or PostgresPerTenant)
}
