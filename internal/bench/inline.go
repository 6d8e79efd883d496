package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// InlineOptions configure the inline projection benchmark.
type InlineOptions struct {
	// Appends per run, each of one WalletOpened and one deposit (default
	// 2,000); Rounds of plain then inline appends (default 3).
	Appends, Rounds int
	Progress        io.Writer
}

// InlineResult holds the runs: appends per second without and with one
// inline projection.
type InlineResult struct {
	Plain, Inline []Run
}

// Ratio is the best inline rate over the best plain one.
func (r InlineResult) Ratio() float64 { return ratio(best(r.Inline).Rate(), best(r.Plain).Rate()) }

type inlineWalletOpened struct {
	Owner string `json:"owner"`
}

func (inlineWalletOpened) EventType() string { return typeWalletOpened }

type inlineMoneyAdded struct {
	Amount int64 `json:"amount"`
}

func (inlineMoneyAdded) EventType() string { return typeMoneyWasAdded }

// inlineBalances is a wallet balance read model run inline: each append
// writes its wallet's row in the append's transaction.
func inlineBalances(pool *pgxpool.Pool) *projection.Projection[struct{ Balance int64 }] {
	p := projection.New[struct{ Balance int64 }]("bench_inline_balance", projection.FromAggregates("wallet"), projection.Postgres(pool),
		projection.Inline(),
		projection.OnInit(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS bench_inline_balance (wallet_id text PRIMARY KEY, balance bigint NOT NULL)`)
			return err
		}))
	projection.On(p, func(_ context.Context, c *projection.Context[struct{ Balance int64 }], e projection.Event[inlineMoneyAdded]) error {
		c.State.Balance += e.Data.Amount
		return nil
	})
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[struct{ Balance int64 }]) error {
		return c.Exec(`INSERT INTO bench_inline_balance (wallet_id, balance) VALUES ($1, $2)
ON CONFLICT (wallet_id) DO UPDATE SET balance = excluded.balance`, c.Partition(), c.State.Balance)
	})
	return p
}

// Inline measures appends/s with and without one inline projection, in
// the same run, on a PostgreSQL with default settings (fsync on): one
// writer appending a WalletOpened and a deposit to a new wallet at a time.
func Inline(ctx context.Context, dbURL string, o InlineOptions) (InlineResult, error) {
	o.Appends, o.Rounds = max(o.Appends, 1), max(o.Rounds, 1)
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	var res InlineResult
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		return res, err
	}
	ip, err := projector.Inline(inlineBalances(pool))
	if err != nil {
		return res, err
	}
	if err := ip.Init(ctx); err != nil {
		return res, err
	}
	plain, inline := eventstore.WithInline(), eventstore.WithInline(ip)
	run := func(a eventstore.Appender, prefix string) (Run, error) {
		start := time.Now()
		for i := range o.Appends {
			_, err := a.Append(ctx, pool, "wallet", fmt.Sprintf("%s-%d", prefix, i), eventstore.ExpectNoStream,
				eventstore.NewEvent{Type: typeWalletOpened, Payload: inlineWalletOpened{Owner: "o"}},
				eventstore.NewEvent{Type: typeMoneyWasAdded, Payload: inlineMoneyAdded{Amount: 100}})
			if err != nil {
				return Run{}, err
			}
		}
		return Run{Events: o.Appends, Elapsed: time.Since(start)}, nil
	}
	for round := 1; round <= o.Rounds; round++ {
		r, err := run(plain, fmt.Sprintf("p%d", round))
		if err != nil {
			return res, err
		}
		res.Plain = append(res.Plain, r)
		fmt.Fprintf(o.Progress, "round %d/%d  plain append      %s\n", round, o.Rounds, runLine(r))
		if r, err = run(inline, fmt.Sprintf("i%d", round)); err != nil {
			return res, err
		}
		res.Inline = append(res.Inline, r)
		fmt.Fprintf(o.Progress, "round %d/%d  + inline projection %s\n", round, o.Rounds, runLine(r))
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM bench_inline_balance WHERE balance = 100`).Scan(&n); err != nil || n != o.Appends*o.Rounds {
		return res, fmt.Errorf("bench: inline read model holds %d wallets of balance 100, want %d (%v)", n, o.Appends*o.Rounds, err)
	}
	return res, nil
}

// Print writes the summary.
func (r InlineResult) Print(w io.Writer) {
	rates := func(runs []Run) string {
		s := make([]string, len(runs))
		for i, x := range runs {
			s[i] = fmt.Sprintf("%.0f", x.Rate())
		}
		return strings.Join(s, ", ")
	}
	fmt.Fprintf(w, "\ninline projection cost: appends (WalletOpened + deposit, one writer, fsync on)\n")
	fmt.Fprintf(w, "  plain %.0f appends/s  with one inline projection %.0f appends/s  ratio %.2f\n", best(r.Plain).Rate(), best(r.Inline).Rate(), r.Ratio())
	fmt.Fprintf(w, "  runs: plain %s; inline %s\n", rates(r.Plain), rates(r.Inline))
}

// RunInlineCommand is `go run ./internal/cmd/bench inline`.
func RunInlineCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inline", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o InlineOptions
	fs.IntVar(&o.Appends, "appends", 2000, "appends per run")
	fs.IntVar(&o.Rounds, "rounds", 3, "rounds of plain then inline appends")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.Progress = stdout
	fmt.Fprintln(stdout, "starting throwaway PostgreSQL (default settings, fsync on) on loopback")
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{Durable: true})
	if err != nil {
		return err
	}
	defer pg.Close()
	url, err := pg.CreateDatabase(ctx, "bench_inline")
	if err != nil {
		return err
	}
	res, err := Inline(ctx, url, o)
	if err != nil {
		return err
	}
	res.Print(stdout)
	return nil
}
