package projection_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projection/projectiontest"
)

type WalletOpened struct {
	Owner string `json:"owner"`
}

type MoneyWasWithdrawnFromWallet struct {
	Amount int64 `json:"amount"`
}

type Balance struct {
	Owner string
	Cents int64
}

// exec is a hook that runs one statement.
func exec(sql string) projection.Hook {
	return func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, sql)
		return err
	}
}

// A projection is a name, a source, options and typed handlers. This one
// keeps a balance per wallet in a PostgreSQL table; the projector
// (package projector) runs it, and projectiontest tries it in memory.
func Example() {
	var pool *pgxpool.Pool // the read model's database
	p := projection.New[Balance]("wallet_balance",
		projection.FromAggregates("wallet"), // events.wallet.*: one partition per wallet
		projection.Postgres(pool),           // c.Exec writes in the batch's transaction
		projection.OnInit(exec(`CREATE TABLE IF NOT EXISTS wallet_balance (
			wallet_id text PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL)`)),
		projection.OnReset(exec(`TRUNCATE wallet_balance`)),
		projection.OnDelete(exec(`DROP TABLE IF EXISTS wallet_balance`)),
	)
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[WalletOpened]) error {
		c.State.Owner = e.Data.Owner
		return nil
	})
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Cents += e.Data.Amount
		return nil
	})
	projection.On(p, func(_ context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasWithdrawnFromWallet]) error {
		c.State.Cents -= e.Data.Amount
		return nil
	})
	// Once per wallet per batch, after its handlers: one write, one
	// derived event, however many events the batch held.
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[Balance]) error {
		if err := c.Exec(`INSERT INTO wallet_balance (wallet_id, owner, balance) VALUES ($1, $2, $3)
			ON CONFLICT (wallet_id) DO UPDATE SET owner = excluded.owner, balance = excluded.balance`,
			c.Partition(), c.State.Owner, c.State.Cents); err != nil {
			return err
		}
		return c.Emit("WalletBalanceWasChanged", map[string]any{"wallet": c.Partition(), "balance": c.State.Cents})
	})
	fmt.Println(p.Name(), p.Validate())

	w := projectiontest.NewPartition(p, "wallet/w-1")
	_ = w.Apply(context.Background(),
		projectiontest.Event("WalletOpened", WalletOpened{Owner: "ann"}),
		projectiontest.Event("MoneyWasAddedToWallet", MoneyWasAddedToWallet{Amount: 2500}),
		projectiontest.Event("MoneyWasWithdrawnFromWallet", MoneyWasWithdrawnFromWallet{Amount: 400}))
	_ = w.Flush(context.Background())
	fmt.Printf("%+v %d %s %s\n", *w.State, len(w.Statements), w.Emitted[0].Type, w.Emitted[0].Payload)
	// Output:
	// wallet_balance <nil>
	// {Owner:ann Cents:2100} 1 WalletBalanceWasChanged {"balance":2100,"wallet":"wallet/w-1"}
}

// Options choose the source, the kind, where state and read model live,
// and how the projector batches and retries; each is named for what it
// chooses.
func ExampleNew() {
	type Count struct{ Events int }
	p := projection.New[Count]("ticket_activity",
		projection.FromAggregates("ticket"),
		projection.Global(), // one partition, every event in stream order
		projection.BatchSize(200),
		projection.Retries(3, 50*time.Millisecond, 5*time.Second),
		projection.Polling(time.Minute), // look for new events once a minute
	)
	projection.OnAny(p, func(_ context.Context, c *projection.Context[Count], _ projection.Meta) error {
		c.State.Events++
		return nil
	})
	fmt.Println(p.Name(), p.Validate())
	// Output: ticket_activity <nil>
}

// Validate lists every problem of a definition at once; the projector
// refuses to start with an invalid one.
func ExampleDefinition_Validate() {
	p := projection.New[struct{}]("Wallet-Balance", projection.BatchSize(0))
	err := p.Validate()
	fmt.Println(errors.Is(err, projection.ErrInvalid))
	fmt.Println(err)
	// Output:
	// true
	// projection: invalid definition "Wallet-Balance":
	//   subject: invalid projection name: "Wallet-Balance": byte 0 is 'W'; use only a-z, 0-9 and '_'
	//   BatchSize 0: want 1 to 100000
	//   no source: use FromAggregates, FromSubjects or FromSource
	//   no handlers: add some with On
}

// OnType names the event type when it is not the Go type's name; OnAny
// sees the events no other handler takes, undecoded.
func ExampleOnType() {
	type Seen struct{ Deposits, Other int }
	p := projection.New[Seen]("wallet_activity", projection.FromAggregates("wallet"))
	projection.OnType(p, "wallet.deposit.v2", func(_ context.Context, c *projection.Context[Seen], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Deposits++
		return nil
	})
	projection.OnAny(p, func(_ context.Context, c *projection.Context[Seen], m projection.Meta) error {
		c.State.Other++
		return nil
	})
	w := projectiontest.NewPartition(p, "wallet/w-1")
	_ = w.Apply(context.Background(),
		projectiontest.Event("wallet.deposit.v2", MoneyWasAddedToWallet{Amount: 1}),
		projectiontest.Event("WalletOpened", WalletOpened{Owner: "ann"}))
	fmt.Printf("%+v\n", *w.State)
	// Output: {Deposits:1 Other:1}
}
