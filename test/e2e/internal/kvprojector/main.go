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

// RatioName is a KV-state projection with a float state: each deposit's
// ratio to the previous one. A deposit of 0 after none (0/0) makes it NaN,
// which JSON cannot encode: that wallet's partition is parked for its
// state, the others go on.
const RatioName = "wallet_ratio_kv"

// Ratio is a wallet's state in RatioName.
type Ratio struct {
	Last  int64   `json:"last"`
	Ratio float64 `json:"ratio"`
}

func ratio() projection.Definer {
	p := projection.New[Ratio](RatioName, projection.FromAggregates("wallet"))
	projection.On(p, func(_ context.Context, c *projection.Context[Ratio], e projection.Event[examples.MoneyWasAddedToWallet]) error {
		if c.State.Last != 0 || e.Data.Amount == 0 {
			c.State.Ratio = float64(e.Data.Amount) / float64(c.State.Last)
		}
		c.State.Last = e.Data.Amount
		return nil
	})
	return p
}

func main() {
	os.Exit(projectorsvc.Main(context.Background(), os.Args[1:], nil, os.Stdout, os.Stderr,
		func(pool *pgxpool.Pool) []projection.Definer { return append(examples.All(pool), ledger(), ratio()) }))
}
