package projector_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// An Admin does from Go what the projector commands do (init, start,
// status, skip, delete …) while replicas run the projection: here it
// starts a projection deployed with ManualStart, skips the event a
// partition is parked on, and deletes the projection.
func ExampleAdmin() {
	ctx := context.Background()
	pool, nc, stop, err := exampleServers(ctx) // PostgreSQL, NATS, a feeder
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	js, _ := jetstream.New(nc)
	admin := projector.NewAdmin(js, projector.AdminOptions{
		Replicas: 1, // of the buckets and streams it creates: as the replicas' Options.Replicas
		Progress: func(format string, args ...any) { fmt.Printf(format+"\n", args...) },
	})

	// Deposits per wallet, kept in KV; it refuses an amount of 13, and
	// parks a partition at its first failure.
	type deposits struct{ N int }
	p := projection.New[deposits]("deposits", projection.FromAggregates("wallet"),
		projection.ManualStart(), projection.Retries(1, 10*time.Millisecond, 10*time.Millisecond))
	projection.On(p, func(_ context.Context, c *projection.Context[deposits], e projection.Event[MoneyWasAddedToWallet]) error {
		if e.Data.Amount == 13 {
			return errors.New("unlucky amount")
		}
		c.State.N++
		return nil
	})
	status := func(when string) {
		st, err := admin.Status(ctx, p)
		fmt.Printf("%s: %s, %d partitions, %d parked (%v)\n", when, st.State, st.Partitions, len(st.Parked), err)
	}

	// A replica runs it; it waits for Resume.
	if err := admin.Init(ctx, p); err != nil {
		fmt.Println(err)
		return
	}
	status("after init")
	replica, _ := projector.New(nc, projector.Options{}, p)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- replica.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	if err := admin.Resume(ctx, p); err != nil {
		fmt.Println(err)
		return
	}

	// Wallet w-1's partition parks on the 13; Skip lets it go on.
	var last int64
	for _, amount := range []int64{100, 13, 200} {
		res, err := eventstore.Append(ctx, pool, "wallet", "w-1", eventstore.ExpectAny,
			eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: MoneyWasAddedToWallet{Amount: amount}})
		if err != nil {
			fmt.Println(err)
			return
		}
		last = res.LastPosition
	}
	wctx, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	err = projector.WaitFor(wctx, js, pool, "deposits", last)
	fmt.Println("parked:", errors.Is(err, projector.ErrParked))
	status("parked")
	if err := admin.Skip(ctx, p, "wallet/w-1"); err != nil {
		fmt.Println(err)
		return
	}
	if err := projector.WaitFor(wctx, js, pool, "deposits", last); err != nil {
		fmt.Println(err)
		return
	}
	status("after skip")

	// Delete waits until the replica has given the projection's slots back.
	if err := admin.Delete(ctx, p); err != nil {
		fmt.Println(err)
		return
	}
	status("after delete")
	// Output:
	// after init: paused, 0 partitions, 0 parked (<nil>)
	// parked: true
	// parked: active, 1 partitions, 1 parked (<nil>)
	// after skip: active, 1 partitions, 0 parked (<nil>)
	// waiting for replicas to give deposits's slots back …
	// after delete: deleted, 0 partitions, 0 parked (<nil>)
}
