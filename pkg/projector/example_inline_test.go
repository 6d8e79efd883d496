package projector_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
)

// An inline projection keeps a uniqueness table of wallet owners in the
// appending transaction: opening a second wallet for an owner fails the
// append itself, and nothing is stored.
func ExampleInline() {
	ctx := context.Background()
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pg.Close()
	url, err := pg.CreateDatabase(ctx, "example_inline")
	if err != nil {
		fmt.Println(err)
		return
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		fmt.Println(err)
		return
	}

	// examples.WalletOwners is projection.New with projection.Postgres and
	// projection.Inline, and a handler that inserts (owner, wallet) into a
	// table whose primary key is the owner (pkg/examples/owners.go).
	owners := examples.WalletOwners(pool)
	inline, err := projector.Inline(owners)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := inline.Init(ctx); err != nil { // tables; `projector init` does it too
		fmt.Println(err)
		return
	}
	store := eventstore.WithInline(inline)

	open := func(wallet, owner string) error {
		_, err := store.Append(ctx, pool, "wallet", wallet, eventstore.ExpectNoStream,
			eventstore.NewEvent{Type: examples.TypeWalletOpened, Payload: examples.WalletOpened{Owner: owner}})
		return err
	}
	fmt.Println("w-1 for ann:", open("w-1", "ann"))
	err = open("w-2", "ann")
	var pgErr *pgconn.PgError
	fmt.Println("w-2 for ann refused:", errors.Is(err, eventstore.ErrInlineProjection) && errors.As(err, &pgErr) && pgErr.Code == "23505")
	var n int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM eventstore.events`).Scan(&n)
	fmt.Println("events stored:", n)
	// Output:
	// w-1 for ann: <nil>
	// w-2 for ann refused: true
	// events stored: 1
}
