package examples

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/projection"
)

// Projection names.
const (
	WalletBalanceName    = "wallet_balance"
	WalletBalanceKVName  = "wallet_balance_kv"
	TicketDetailsName    = "ticket_details"
	TicketCountsName     = "ticket_counts"
	OrderFulfilmentName  = "order_fulfilment"
	HighValueWalletsName = "high_value_wallets"
)

// WalletState is what wallet_balance keeps per wallet besides its row: the
// balance, so that each event writes the new balance rather than a delta
// and the flush hook can emit it.
type WalletState struct {
	Balance int64 `json:"balance"`
}

// WalletBalance is the partitioned projection wallet_balance: one row per
// wallet in the table wallet_balance(wallet_id, owner, balance), written in
// the batch's transaction together with the wallet's position, and one
// WalletBalanceWasChanged per wallet per batch.
func WalletBalance(pool *pgxpool.Pool) *projection.Projection[WalletState] {
	p := projection.New[WalletState](WalletBalanceName,
		projection.FromAggregates("wallet"),
		projection.Postgres(pool),
		projection.OnInit(execHook(`CREATE TABLE IF NOT EXISTS wallet_balance (
    wallet_id text PRIMARY KEY,
    owner     text   NOT NULL DEFAULT '',
    balance   bigint NOT NULL DEFAULT 0
)`)),
		projection.OnReset(execHook(`TRUNCATE wallet_balance`)),
		projection.OnDelete(execHook(`DROP TABLE IF EXISTS wallet_balance`)),
		projection.OnResetPartition(func(ctx context.Context, tx pgx.Tx, partition string) error {
			_, err := tx.Exec(ctx, `DELETE FROM wallet_balance WHERE wallet_id = $1`, idOf(partition))
			return err
		}),
	)
	// The handlers queue their statements (Exec): a batch's writes travel
	// to PostgreSQL together, in its commit's round trip. Each event writes
	// the balance it leads to, so that a write PostgreSQL refuses is
	// pinned on its event (which `projector skip` can then skip).
	projection.On(p, func(_ context.Context, c *projection.Context[WalletState], e projection.Event[WalletOpened]) error {
		return c.Exec(`INSERT INTO wallet_balance (wallet_id, owner, balance) VALUES ($1, $2, $3)
ON CONFLICT (wallet_id) DO UPDATE SET owner = excluded.owner`, e.AggregateID, e.Data.Owner, c.State.Balance)
	})
	projection.On(p, func(_ context.Context, c *projection.Context[WalletState], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Balance += e.Data.Amount
		return upsertBalance(c, e.AggregateID)
	})
	projection.On(p, func(_ context.Context, c *projection.Context[WalletState], e projection.Event[MoneyWasWithdrawnFromWallet]) error {
		c.State.Balance -= e.Data.Amount
		return upsertBalance(c, e.AggregateID)
	})
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[WalletState]) error {
		return c.Emit(TypeWalletBalanceWasChanged, WalletBalanceWasChanged{WalletID: idOf(c.Partition()), Balance: c.State.Balance})
	})
	return p
}

func upsertBalance(c *projection.Context[WalletState], walletID string) error {
	return c.Exec(`INSERT INTO wallet_balance (wallet_id, balance) VALUES ($1, $2)
ON CONFLICT (wallet_id) DO UPDATE SET balance = excluded.balance`, walletID, c.State.Balance)
}

// WalletDoc is the document wallet_balance_kv keeps per wallet.
type WalletDoc struct {
	Owner   string `json:"owner"`
	Balance int64  `json:"balance"`
}

// WalletBalanceKV is wallet_balance without SQL: the read model is the
// partitions' state itself, one JSON document per wallet in the KV bucket
// jetproj_state_wallet_balance_kv (read it with projector.StoreFor(…).Get).
// Like wallet_balance it emits one WalletBalanceWasChanged per wallet per
// batch; a KV-state projection's derived events ride in the wallet's record,
// written with its state, and the projector publishes them to
// project.wallet_balance_kv.> itself — no outbox, no emitter.
func WalletBalanceKV() *projection.Projection[WalletDoc] {
	p := projection.New[WalletDoc](WalletBalanceKVName, projection.FromAggregates("wallet"))
	projection.On(p, func(_ context.Context, c *projection.Context[WalletDoc], e projection.Event[WalletOpened]) error {
		c.State.Owner = e.Data.Owner
		return nil
	})
	projection.On(p, func(_ context.Context, c *projection.Context[WalletDoc], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Balance += e.Data.Amount
		return nil
	})
	projection.On(p, func(_ context.Context, c *projection.Context[WalletDoc], e projection.Event[MoneyWasWithdrawnFromWallet]) error {
		c.State.Balance -= e.Data.Amount
		return nil
	})
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[WalletDoc]) error {
		return c.Emit(TypeWalletBalanceWasChanged, WalletBalanceWasChanged{WalletID: idOf(c.Partition()), Balance: c.State.Balance})
	})
	return p
}

// execHook is a lifecycle hook running one statement.
func execHook(sql string) projection.Hook {
	return func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, sql)
		return err
	}
}

// idOf returns the aggregate id of a partition key "<aggregate_type>/<id>".
func idOf(partition string) string {
	_, id, _ := strings.Cut(partition, "/")
	return id
}
