package examples_test

import (
	"context"
	"fmt"

	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projection"
)

// A projection in a few lines: a name, a source, typed handlers. This one
// keeps each wallet's balance as a document in the state store.
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

	fmt.Println(p.Name(), p.Kind(), p.SourceConfig().Subjects, p.Validate())
	// Output: balances partitioned [events.wallet.*] <nil>
}

// A global projection sees every event of its source in order, on one
// replica at a time.
func Example_global() {
	var registered int
	p := projection.New[struct{}]("tickets_registered", projection.FromAggregates("ticket"), projection.AsGlobal())
	projection.On(p, func(context.Context, *projection.Context[struct{}], projection.Event[examples.TicketWasRegistered]) error {
		registered++
		return nil
	})
	fmt.Println(p.Name(), p.Kind(), p.Handles("TicketWasRegistered"), p.Handles("TicketWasClosed"))
	// Output: tickets_registered global true false
}

// The example projections, ready for a projector. Building them does not
// touch the pool, so nil is enough to list them.
func ExampleAll() {
	for _, d := range examples.All(nil) {
		fmt.Println(d.Def().Name(), d.Def().Kind())
	}
	// Output:
	// wallet_balance partitioned
	// wallet_balance_kv partitioned
	// ticket_details partitioned
	// ticket_counts global
	// order_fulfilment partitioned
	// high_value_wallets partitioned
}

// Handlers can be tried without servers: apply messages to a partition in
// memory.
func ExampleWalletBalanceKV() {
	d := examples.WalletBalanceKV().Def()
	pc := &projection.PartitionContext{Key: "wallet/w-1", State: d.NewState()}
	for _, m := range []projection.Meta{
		{Type: "WalletOpened", Raw: []byte(`{"owner":"ann"}`)},
		{Type: "MoneyWasAddedToWallet", Raw: []byte(`{"amount":2500}`)},
		{Type: "MoneyWasWithdrawnFromWallet", Raw: []byte(`{"amount":400}`)},
	} {
		if err := d.Apply(context.Background(), pc, m); err != nil {
			fmt.Println(err)
		}
	}
	fmt.Printf("%+v\n", *pc.State.(*examples.WalletDoc))
	// Output: {Owner:ann Balance:2100}
}

// A pipeline stage reads another projection's derived events; here one
// partition per wallet of wallet_balance's stream.
func ExampleHighValueWallets() {
	d := examples.HighValueWallets(nil).Def()
	key, _ := d.Partitions().Partition(projection.Message{Subject: "project.wallet_balance.wallet.w-1"})
	fmt.Println(d.SourceConfig().Stream, d.SourceConfig().Subjects, key)
	// Output: PROJECT_WALLET_BALANCE [project.wallet_balance.>] wallet/w-1
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
