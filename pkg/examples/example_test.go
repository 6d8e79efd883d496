package examples_test

import (
	"context"
	"fmt"

	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projection/projectiontest"
)

// A projection in a few lines: a name, a source, typed handlers. This one
// keeps each wallet's balance as a document in the state store; its
// handlers are tried here in memory, on one wallet's partition.
func Example() {
	type Balance struct{ Cents int64 }

	p := projection.New[Balance]("balances", projection.FromAggregates("wallet"))
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[examples.MoneyWasAddedToWallet]) error {
		c.State.Cents += e.Data.Amount
		return nil
	})
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[examples.MoneyWasWithdrawnFromWallet]) error {
		c.State.Cents -= e.Data.Amount
		return nil
	})
	fmt.Println(p.Name(), p.Validate())

	w := projectiontest.NewPartition(p, "wallet/w-1")
	err := w.Apply(context.Background(),
		projectiontest.Event("MoneyWasAddedToWallet", examples.MoneyWasAddedToWallet{Amount: 2500}),
		projectiontest.Event("MoneyWasWithdrawnFromWallet", examples.MoneyWasWithdrawnFromWallet{Amount: 400}))
	fmt.Println(w.State.Cents, err)
	// Output:
	// balances <nil>
	// 2100 <nil>
}

// A global projection sees every event of its source in order, on one
// replica at a time, in its only partition.
func Example_global() {
	type Count struct{ Registered int }
	p := projection.New[Count]("tickets_registered", projection.FromAggregates("ticket"), projection.Global())
	projection.On(p, func(_ context.Context, c *projection.Context[Count], _ projection.Event[examples.TicketWasRegistered]) error {
		c.State.Registered++
		return nil
	})

	all := projectiontest.NewPartition(p, projection.GlobalPartition)
	for _, typ := range []string{"bug", "feature", "bug"} {
		_ = all.Apply(context.Background(), projectiontest.Event("TicketWasRegistered", examples.TicketWasRegistered{Type: typ}))
	}
	_ = all.Apply(context.Background(), projectiontest.Event("TicketWasClosed", examples.TicketWasClosed{}))
	fmt.Println(p.Name(), all.State.Registered)
	// Output: tickets_registered 3
}

// The example projections, ready for a projector. Building them does not
// touch the pool, so nil is enough to list them.
func ExampleAll() {
	for _, d := range examples.All(nil) {
		fmt.Println(d.Def().Name())
	}
	// Output:
	// wallet_balance
	// wallet_balance_kv
	// ticket_details
	// ticket_counts
	// order_fulfilment
	// high_value_wallets
}

// Handlers can be tried without servers: apply events to a partition in
// memory.
func ExampleWalletBalanceKV() {
	w := projectiontest.NewPartition(examples.WalletBalanceKV(), "wallet/w-1")
	err := w.Apply(context.Background(),
		projectiontest.Event("WalletOpened", examples.WalletOpened{Owner: "ann"}),
		projectiontest.Event("MoneyWasAddedToWallet", examples.MoneyWasAddedToWallet{Amount: 2500}),
		projectiontest.Event("MoneyWasWithdrawnFromWallet", examples.MoneyWasWithdrawnFromWallet{Amount: 400}))
	fmt.Printf("%+v %v\n", *w.State, err)
	// The end of a batch: one derived event, with the balance it ends on.
	if err := w.Flush(context.Background()); err != nil {
		fmt.Println(err)
	}
	for _, e := range w.Emitted {
		fmt.Println(e.Type, string(e.Payload))
	}
	// Output:
	// {Owner:ann Balance:2100} <nil>
	// WalletBalanceWasChanged {"walletId":"w-1","balance":2100}
}

// A pipeline stage reads another projection's derived events — here
// wallet_balance's WalletBalanceWasChanged, one partition per wallet — and
// emits its own when a balance reaches the threshold from below.
func ExampleHighValueWallets() {
	w := projectiontest.NewPartition(examples.HighValueWallets(nil), "wallet/w-1")
	for _, balance := range []int64{90000, 120000, 130000, 50000, 100000} {
		_ = w.Apply(context.Background(), projectiontest.Event("WalletBalanceWasChanged",
			examples.WalletBalanceWasChanged{WalletID: "w-1", Balance: balance}))
	}
	for _, e := range w.Emitted {
		fmt.Println(e.Type, string(e.Payload))
	}
	fmt.Println("crossings:", w.State.Crossings)
	// Output:
	// WalletBecameHighValue {"walletId":"w-1","balance":120000}
	// WalletBecameHighValue {"walletId":"w-1","balance":100000}
	// crossings: 2
}

// The orders in which an order's three events can arrive, for
// AppendOrderFlow.
func ExampleArrivalOrders() {
	for _, steps := range examples.ArrivalOrders() {
		fmt.Println(steps)
	}
	// Output:
	// [placed paid delivered]
	// [placed delivered paid]
	// [paid placed delivered]
	// [paid delivered placed]
	// [delivered placed paid]
	// [delivered paid placed]
}
