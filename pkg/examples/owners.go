package examples

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/projection"
)

// WalletOwnersName is the inline projection of the example domain.
const WalletOwnersName = "wallet_owners"

// WalletOwners is an inline projection: a uniqueness table of wallet
// owners, wallet_owners(owner, wallet_id), written in the transaction that
// appends a WalletOpened (projector.Inline and eventstore.WithInline). An
// owner who already has a wallet makes the append fail — the command sees
// the error and nothing is stored. It can also run asynchronously (a
// rebuild through the stream), like any PostgreSQL projection; it is not
// among All, whose projections run only asynchronously.
func WalletOwners(pool *pgxpool.Pool) *projection.Projection[struct{}] {
	p := projection.New[struct{}](WalletOwnersName,
		projection.FromAggregates("wallet"),
		projection.Postgres(pool),
		projection.Inline(),
		projection.OnInit(execHook(`CREATE TABLE IF NOT EXISTS wallet_owners (
    owner     text PRIMARY KEY,
    wallet_id text NOT NULL
)`)),
		projection.OnReset(execHook(`TRUNCATE wallet_owners`)),
		projection.OnDelete(execHook(`DROP TABLE IF EXISTS wallet_owners`)),
	)
	projection.On(p, func(_ context.Context, c *projection.Context[struct{}], e projection.Event[WalletOpened]) error {
		return c.Exec(`INSERT INTO wallet_owners (owner, wallet_id) VALUES ($1, $2)`, e.Data.Owner, e.AggregateID)
	})
	return p
}
