// Command kvprojector is the example projector (every projection of package
// examples) plus wallet_ledger_kv, a projection whose state lives in KV and
// that emits derived events: the projector publishes those itself, to
// project.wallet_ledger_kv.> and to the linked stream wallet_ledger. The
// end-to-end tests run it where such a projection matters (permissions).
package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

// Name is the KV-state projection's name; LinkStream its linked stream.
const (
	Name       = "wallet_ledger_kv"
	LinkStream = "wallet_ledger"
	// PoisonAmount is a deposit the projection refuses: its wallet's
	// partition is parked at once (one attempt).
	PoisonAmount = 13
)

// Ledger is a wallet's state.
type Ledger struct {
	Balance int64 `json:"balance"`
}

// errPoison is the handler error of a PoisonAmount deposit.
var errPoison = errors.New("wallet_ledger_kv: refusing a deposit of 13")

func ledger() projection.Definer {
	p := projection.New[Ledger](Name, projection.FromAggregates("wallet"), projection.Retries(1, 10*time.Millisecond, 10*time.Millisecond))
	projection.On(p, func(_ context.Context, c *projection.Context[Ledger], e projection.Event[examples.MoneyWasAddedToWallet]) error {
		if e.Data.Amount == PoisonAmount {
			return errPoison
		}
		c.State.Balance += e.Data.Amount
		return nil
	})
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[Ledger]) error {
		_, id, _ := strings.Cut(c.Partition(), "/")
		return c.LinkTo(LinkStream, "WalletBalanceWasChanged", examples.WalletBalanceWasChanged{WalletID: id, Balance: c.State.Balance})
	})
	return p
}

func main() {
	os.Exit(projectorsvc.Main(context.Background(), os.Args[1:], nil, os.Stdout, os.Stderr,
		func(pool *pgxpool.Pool) []projection.Definer { return append(examples.All(pool), ledger()) }))
}
