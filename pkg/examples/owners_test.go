package examples_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/devenv"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
)

// An inline projection keeps wallet owners unique: opening a second wallet
// for the same owner fails the append itself.
func ExampleWalletOwners() {
	ctx := context.Background()
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pg.Close()
	url, err := pg.CreateDatabase(ctx, "example_owners")
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
	owners, err := projector.Inline(examples.WalletOwners(pool))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := owners.Init(ctx); err != nil {
		fmt.Println(err)
		return
	}
	store := eventstore.WithInline(owners)
	open := func(wallet, owner string) error {
		_, err := store.Append(ctx, pool, "wallet", wallet, eventstore.ExpectNoStream,
			eventstore.NewEvent{Type: examples.TypeWalletOpened, Payload: examples.WalletOpened{Owner: owner}})
		return err
	}
	fmt.Println("w-1 for ann:", open("w-1", "ann"))
	err = open("w-2", "ann")
	var pgErr *pgconn.PgError
	fmt.Println("w-2 for ann refused:", errors.Is(err, eventstore.ErrInlineProjection) && errors.As(err, &pgErr) && pgErr.Code == "23505")
	fmt.Println("w-2 for bob:", open("w-2", "bob"))
	// Output:
	// w-1 for ann: <nil>
	// w-2 for ann refused: true
	// w-2 for bob: <nil>
}
