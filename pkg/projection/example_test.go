package projection_test

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projection/projectiontest"
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
	for _, carrier := range []string{"shipped_orders", "not a stream"} {
		pt := projectiontest.NewPartition(p, "order/o-1")
		err := pt.Apply(context.Background(), projectiontest.Event("OrderShipped", OrderShipped{Carrier: carrier}))
		fmt.Println(len(pt.Emitted), err != nil)
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
			projection.Metadata(map[string]string{"shipped_by": e.Data.Carrier}),
			projection.Link("shipped_orders", "carrier_feed"),
			projection.LinkOnly())
	})
	pt := projectiontest.NewPartition(p, "order/o-1")
	err := pt.Apply(context.Background(), projectiontest.Event("OrderShipped", OrderShipped{Carrier: "acme"}))
	e := pt.Emitted[0]
	fmt.Println(err, len(pt.Emitted), e.Links, e.LinkOnly, e.Metadata)
	// Output:
	// <nil> 1 [{shipped_orders false} {carrier_feed false}] true map[shipped_by:acme]
}

type MoneyWasAddedToWallet struct {
	Amount int64 `json:"amount"`
}

type Wallet struct{ Balance int64 }

// A handler of a projection with a PostgreSQL sink writes its read model by
// queueing statements: in the projector they travel with the batch's
// commit — no round trip per statement — and a statement PostgreSQL
// refuses fails this wallet's partition alone. Without a PostgreSQL sink
// Exec returns ErrNoPostgres.
func ExampleContext_Exec() {
	handler := func(_ context.Context, c *projection.Context[Wallet], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Balance += e.Data.Amount
		return c.Exec(`UPDATE wallet_balance SET balance = $2 WHERE wallet_id = $1`, e.AggregateID, c.State.Balance)
	}
	var pool *pgxpool.Pool // your read model's database
	p := projection.New[Wallet]("wallet_balance", projection.FromAggregates("wallet"), projection.Postgres(pool))
	projection.On(p, handler)
	kv := projection.New[Wallet]("wallet_balance_kv", projection.FromAggregates("wallet"))
	projection.On(kv, handler)

	deposit := projectiontest.Event("MoneyWasAddedToWallet", MoneyWasAddedToWallet{Amount: 500})
	deposit.AggregateID = "w-1"
	pt := projectiontest.NewPartition(p, "wallet/w-1")
	fmt.Println(pt.Apply(context.Background(), deposit), pt.Statements)
	fmt.Println(projectiontest.NewPartition(kv, "wallet/w-1").Apply(context.Background(), deposit))
	// Output:
	// <nil> [{UPDATE wallet_balance SET balance = $2 WHERE wallet_id = $1 [w-1 500]}]
	// projection: Exec needs a PostgreSQL sink (projection.Postgres or PostgresPerTenant)
}
