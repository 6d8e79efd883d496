package examples

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/subject"
)

// HighValueThreshold is the balance, in cents, from which a wallet is of
// high value.
const HighValueThreshold int64 = 100000

// HighValueState is what high_value_wallets keeps per wallet with its
// position.
type HighValueState struct {
	Balance   int64 `json:"balance"`
	High      bool  `json:"high"`
	Crossings int64 `json:"crossings"`
}

// HighValueWallets is the projection high_value_wallets, a pipeline stage:
// it does not read EVENTS but the derived events of wallet_balance, the
// WalletBalanceWasChanged on project.wallet_balance.> in wallet_balance's
// own stream, partitioned per wallet (project.wallet_balance.wallet.<id> is
// the partition wallet/<id>). When a wallet's balance reaches
// HighValueThreshold from below it emits WalletBecameHighValue
// {"walletId","balance"} on project.high_value_wallets.wallet.<id>; it emits
// again only after the balance fell below the threshold and reached it once
// more. The table
//
//	high_value_wallets(wallet_id, balance, high_value, crossings, became_high_at)
//
// holds each wallet's last balance seen, whether it is of high value now and
// how often it became so.
//
// It sees balances as wallet_balance publishes them, one per wallet per
// batch of wallet_balance: a deposit and a withdrawal in the same batch may
// cross the threshold and back without high_value_wallets seeing it.
// ExpectedHighValue computes the expectation from the stream it reads.
//
// As a projection of its own, it has its own positions, failures and
// lifecycle: when it fails or is stopped, wallet_balance keeps running and
// publishing, and high_value_wallets resumes from its positions in
// wallet_balance's stream. opts are added to the definition's options
// (BatchSize, Retries …).
func HighValueWallets(pool *pgxpool.Pool, opts ...projection.Option) *projection.Projection[HighValueState] {
	src := contract.ProjectionStream(WalletBalanceName)
	p := projection.New[HighValueState](HighValueWalletsName, append([]projection.Option{
		projection.FromSubjects(src, subject.ProjectionFilter(WalletBalanceName)),
		projection.PartitionBy(walletOfBalanceSubject),
		projection.Postgres(pool),
		projection.OnInit(execHook(`CREATE TABLE IF NOT EXISTS high_value_wallets (
    wallet_id      text PRIMARY KEY,
    balance        bigint  NOT NULL,
    high_value     boolean NOT NULL,
    crossings      bigint  NOT NULL DEFAULT 0,
    became_high_at timestamptz
)`)),
		projection.OnReset(execHook(`TRUNCATE high_value_wallets`)),
		projection.OnDelete(execHook(`DROP TABLE IF EXISTS high_value_wallets`)),
		projection.OnResetPartition(func(ctx context.Context, tx pgx.Tx, partition string) error {
			_, err := tx.Exec(ctx, `DELETE FROM high_value_wallets WHERE wallet_id = $1`, idOf(partition))
			return err
		}),
	}, opts...)...)
	projection.On(p, func(ctx context.Context, c *projection.Context[HighValueState], e projection.Event[WalletBalanceWasChanged]) error {
		s := c.State
		s.Balance = e.Data.Balance
		became := !s.High && s.Balance >= HighValueThreshold
		switch {
		case became:
			s.High = true
			s.Crossings++
		case s.High && s.Balance < HighValueThreshold:
			s.High = false
		}
		err := c.Exec(`INSERT INTO high_value_wallets AS h (wallet_id, balance, high_value, crossings, became_high_at)
VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)
ON CONFLICT (wallet_id) DO UPDATE SET balance = excluded.balance, high_value = excluded.high_value,
    crossings = excluded.crossings, became_high_at = coalesce(excluded.became_high_at, h.became_high_at)`,
			e.Data.WalletID, s.Balance, s.High, s.Crossings, became)
		if err != nil || !became {
			return err
		}
		return c.Emit(TypeWalletBecameHighValue, WalletBecameHighValue{WalletID: e.Data.WalletID, Balance: s.Balance})
	})
	return p
}

// walletOfBalanceSubject is the partition of a wallet_balance derived
// event: project.wallet_balance.wallet.w-1 is wallet/w-1, so that
// high_value_wallets emits on project.high_value_wallets.wallet.w-1.
func walletOfBalanceSubject(subj string) string {
	if _, suffix, err := subject.ParseProjection(subj); err == nil && len(suffix) == 2 {
		return projection.AggregateKey(suffix[0], suffix[1])
	}
	// Not wallet_balance's usual shape (e.g. a hashed id token): the
	// subject's tail identifies the wallet as well.
	_, rest, _ := strings.Cut(strings.TrimPrefix(subj, contract.ProjectionPrefix+"."), ".")
	return rest
}
