package projectiontest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projection/projectiontest"
)

type Deposited struct {
	Amount int64 `json:"amount"`
}

type Account struct{ Cents int64 }

// accounts writes with Exec when pool is given (a nil pool will do: the
// sink is what counts) and emits from its flush hook.
func accounts(opts ...projection.Option) *projection.Projection[Account] {
	p := projection.New[Account]("accounts", append([]projection.Option{projection.FromAggregates("account")}, opts...)...)
	projection.On(p, func(_ context.Context, c *projection.Context[Account], e projection.Event[Deposited]) error {
		c.State.Cents += e.Data.Amount
		return c.Exec(`UPDATE accounts SET cents = $2 WHERE id = $1`, e.AggregateID, c.State.Cents)
	})
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[Account]) error {
		return c.LinkTo("account_feed", "AccountChanged", map[string]any{"tenant": c.Tenant(), "cents": c.State.Cents},
			projection.Metadata(map[string]string{"k": "v"}))
	})
	return p
}

// A handler is tried on one partition: its state, the statements it
// queued, the derived events it recorded.
func ExampleNewPartition() {
	var pool *pgxpool.Pool
	a := projectiontest.NewPartition(accounts(projection.Postgres(pool)), "account/a-1")
	deposit := projectiontest.Event("Deposited", Deposited{Amount: 700})
	deposit.AggregateID = "a-1"
	if err := a.Apply(context.Background(), deposit, deposit); err != nil {
		fmt.Println(err)
	}
	if err := a.Flush(context.Background()); err != nil {
		fmt.Println(err)
	}
	fmt.Println(a.State.Cents)
	for _, s := range a.Statements {
		fmt.Println(s.SQL, s.Args)
	}
	for _, e := range a.Emitted {
		fmt.Println(e.Type, string(e.Payload), e.Links, e.Metadata)
	}
	// Output:
	// 1400
	// UPDATE accounts SET cents = $2 WHERE id = $1 [a-1 700]
	// UPDATE accounts SET cents = $2 WHERE id = $1 [a-1 1400]
	// AccountChanged {"cents":1400,"tenant":""} [{account_feed false}] map[k:v]
}

func TestPartition(t *testing.T) {
	ctx := context.Background()

	t.Run("Exec needs a PostgreSQL sink", func(t *testing.T) {
		a := projectiontest.NewPartition(accounts(), "account/a-1")
		err := a.Apply(ctx, projectiontest.Event("Deposited", Deposited{Amount: 1}))
		if !errors.Is(err, projection.ErrNoPostgres) {
			t.Fatalf("err = %v, want ErrNoPostgres", err)
		}
		tenants := projectiontest.NewPartition(accounts(projection.PostgresPerTenant(map[string]*pgxpool.Pool{"acme": nil})), "account/a-1")
		if err := tenants.Apply(ctx, projectiontest.Event("Deposited", Deposited{Amount: 1})); err != nil || len(tenants.Statements) != 1 {
			t.Fatalf("PostgresPerTenant: err %v, statements %v", err, tenants.Statements)
		}
	})

	t.Run("state, tenant and unhandled events", func(t *testing.T) {
		a := projectiontest.NewPartition(accounts(projection.Postgres(nil)), "account/a-1")
		*a.State = Account{Cents: 100}
		deposit := projectiontest.Event("Deposited", Deposited{Amount: 5})
		deposit.Metadata = map[string]string{"tenant": "acme"}
		if err := a.Apply(ctx, projectiontest.Event("Unknown", nil), deposit); err != nil {
			t.Fatal(err)
		}
		a.State = &Account{Cents: 1} // a new state is picked up too
		if err := a.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if len(a.Emitted) != 1 {
			t.Fatalf("emitted %+v", a.Emitted)
		}
		var got map[string]any
		if err := json.Unmarshal(a.Emitted[0].Payload, &got); err != nil || got["tenant"] != "acme" || got["cents"] != 1.0 {
			t.Fatalf("payload %s (%v)", a.Emitted[0].Payload, err)
		}
		if len(a.Statements) != 1 || fmt.Sprint(a.Statements[0].Args) != "[ 105]" {
			t.Fatalf("statements %v", a.Statements)
		}
	})

	t.Run("a payload that does not decode", func(t *testing.T) {
		a := projectiontest.NewPartition(accounts(projection.Postgres(nil)), "account/a-1")
		err := a.Apply(ctx, projectiontest.Event("Deposited", json.RawMessage(`{"amount":"x"}`)))
		var de *projection.DecodeError
		if !errors.As(err, &de) || de.EventType != "Deposited" {
			t.Fatalf("err = %v, want a DecodeError for Deposited", err)
		}
	})
}
