package projector_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// Read-your-writes: a command appends events, then waits until the
// projection has applied them before it reads the read model.
func ExampleWaitFor() {
	ctx := context.Background()
	pool, nc, stop, err := exampleServers(ctx) // PostgreSQL, NATS, a feeder
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	js, _ := jetstream.New(nc)

	// A projection with a PostgreSQL read model, run by a projector.
	balances := projection.New[struct{}]("balances", projection.FromAggregates("wallet"), projection.Postgres(pool),
		projection.OnInit(func(ctx context.Context, tx projectionTx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE balances (wallet text PRIMARY KEY, cents bigint NOT NULL)`)
			return err
		}))
	projection.On(balances, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[MoneyWasAddedToWallet]) error {
		_, err := c.Tx().Exec(ctx, `INSERT INTO balances VALUES ($1, $2)
ON CONFLICT (wallet) DO UPDATE SET cents = balances.cents + $2`, e.Meta.AggregateID, e.Data.Amount)
		return err
	})
	if err := projector.NewAdmin(js, projector.AdminOptions{}).Init(ctx, balances); err != nil {
		fmt.Println(err)
		return
	}
	p, _ := projector.New(nc, projector.Options{}, balances)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	defer func() { cancel(); <-done }()

	// The command: append, wait, read.
	res, err := eventstore.Append(ctx, pool, "wallet", "w-1", eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "MoneyWasAddedToWallet", Payload: MoneyWasAddedToWallet{Amount: 2500}})
	if err != nil {
		fmt.Println(err)
		return
	}
	wctx, cancelWait := context.WithTimeout(ctx, 10*time.Second)
	defer cancelWait()
	if err := projector.WaitFor(wctx, js, pool, "balances", res.LastPosition); err != nil {
		fmt.Println(err)
		return
	}
	var cents int64
	_ = pool.QueryRow(ctx, `SELECT cents FROM balances WHERE wallet = 'w-1'`).Scan(&cents)
	fmt.Println("w-1 has", cents, "cents")
	// Output: w-1 has 2500 cents
}

// exampleServers starts PostgreSQL with the event store, NATS, and a
// feeder between them; stop undoes it all.
func exampleServers(ctx context.Context) (*pgxpool.Pool, *nats.Conn, func(), error) {
	var undo []func()
	stop := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	fail := func(err error) (*pgxpool.Pool, *nats.Conn, func(), error) { stop(); return nil, nil, nil, err }
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{})
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func() { _ = pg.Close() })
	url, err := pg.CreateDatabase(ctx, "example_waitfor")
	if err != nil {
		return fail(err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, pool.Close)
	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		return fail(err)
	}
	dir, err := os.MkdirTemp("", "jetproj-example")
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func() { _ = os.RemoveAll(dir) })
	srv, err := devenv.StartNATS(ctx, devenv.NATSOptions{Dir: dir, NoSync: true})
	if err != nil {
		return fail(err)
	}
	undo = append(undo, srv.Shutdown)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		return fail(err)
	}
	undo = append(undo, nc.Close)
	// The stream the projection reads, then the feeder that fills it.
	js, _ := jetstream.New(nc)
	if _, _, err := feeder.EnsureStream(ctx, js, feeder.Config{}.Defaults()); err != nil {
		return fail(err)
	}
	f, err := feeder.New(feeder.Config{}.Defaults(), feeder.Deps{Pool: pool, NC: nc})
	if err != nil {
		return fail(err)
	}
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.Run(fctx) }()
	undo = append(undo, func() { cancel(); <-done })
	return pool, nc, stop, nil
}
