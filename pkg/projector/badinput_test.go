package projector_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// TestLongAggregateIDKeepsKVProjectionRunning is issue 17's first defect:
// a partition key whose KV key would exceed the server's control line
// closed the connection and stopped the projection for good. Its key is
// now hashed; the partition is projected like any other, and so is every
// wallet after it.
func TestLongAggregateIDKeepsKVProjectionRunning(t *testing.T) {
	t.Parallel()
	b := setup(t)
	long := strings.Repeat(".", 1500)
	b.publishWallets(t, 50, 1)
	b.publish(t, long, "WalletOpened", `{"owner":"dots"}`)
	b.publish(t, long, "MoneyWasAddedToWallet", `{"amount":7}`)
	b.publishWallets(t, 50, 1)
	r := b.run(t, "r1", walletBalance("wallet_balance_long"))
	b.waitFold(t, "wallet_balance_long", 30*time.Second)
	// A replica that loads the slot again finds the record under its
	// hashed key, and goes on from its position.
	r.stop(t)
	b.publish(t, long, "MoneyWasAddedToWallet", `{"amount":5}`)
	b.run(t, "r2", walletBalance("wallet_balance_long"))
	b.waitFold(t, "wallet_balance_long", 30*time.Second)
}

// Oddities is a state that can go wrong in the ways a store refuses.
type Oddities struct {
	Cents int64   `json:"cents"`
	Ratio float64 `json:"ratio"`
	Note  string  `json:"note,omitempty"`
	Blob  string  `json:"blob,omitempty"`
}

// oddities projects wallets; an amount of 13 makes the state unencodable
// (NaN), 77 makes it larger than a KV value may be, 666 puts a NUL in it.
func oddities(name string, opts ...projection.Option) *projection.Projection[Oddities] {
	p := projection.New[Oddities](name, append([]projection.Option{projection.FromAggregates("wallet"),
		projection.Retries(2, 10*time.Millisecond, 20*time.Millisecond)}, opts...)...)
	projection.On(p, func(_ context.Context, c *projection.Context[Oddities], e projection.Event[WalletOpened]) error {
		return nil
	})
	projection.On(p, func(_ context.Context, c *projection.Context[Oddities], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Cents += e.Data.Amount
		switch e.Data.Amount {
		case 13:
			c.State.Ratio = math.NaN()
		case 77:
			c.State.Blob = strings.Repeat("x", 2<<20)
		case 666:
			c.State.Note = "nul\x00here"
		}
		if c.Tx() != nil {
			return c.Exec(`INSERT INTO odd (wallet, cents, applied) VALUES ($1, $2, 1)
ON CONFLICT (wallet) DO UPDATE SET cents = excluded.cents, applied = odd.applied + 1`, e.AggregateID, c.State.Cents)
		}
		return nil
	})
	return p
}

// TestStoreRefusalsFailOnlyTheirPartition is issue 17's second defect on
// the KV store: a state that does not encode (NaN) or outgrows a KV value
// failed every commit of the projection, forever. Now those partitions
// are parked with the reason and every other one is projected.
func TestStoreRefusalsFailOnlyTheirPartition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const name = "oddities_kv"
	b.publishWallets(t, 60, 1)
	b.publish(t, "w-nan", "WalletOpened", `{"owner":"n"}`)
	b.publish(t, "w-nan", "MoneyWasAddedToWallet", `{"amount":13}`)
	b.publish(t, "w-big", "WalletOpened", `{"owner":"b"}`)
	b.publish(t, "w-big", "MoneyWasAddedToWallet", `{"amount":77}`)
	b.publishWallets(t, 60, 1)
	b.run(t, "r1", oddities(name))
	devtest.Eventually(t, 30*time.Second, func() error {
		got := b.states(t, name)
		for _, k := range []string{"wallet/w-nan", "wallet/w-big"} {
			if got[k].Parked == nil || !strings.Contains(got[k].Parked.Error, "state cannot be stored") {
				return fmt.Errorf("%s not parked for its state: %+v", k, got[k].Parked)
			}
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		for k, want := range b.fold {
			if k == "wallet/w-nan" || k == "wallet/w-big" {
				continue
			}
			var s Oddities
			if err := jsonUnmarshal(got[k].State, &s); err != nil || s.Cents != want.Cents {
				return fmt.Errorf("%s: %+v (%v), want %d cents", k, s, err, want.Cents)
			}
		}
		return nil
	})
	if p := b.states(t, name)["wallet/w-big"].Parked; !strings.Contains(p.Error, "max_payload") {
		t.Errorf("the oversized partition's reason does not say what limit it hit: %q", p.Error)
	}
}

// TestQueuedStatementFailureParksOnlyItsPartition: statements handlers
// queue (Context.Exec) travel with the commit; when PostgreSQL refuses
// one — a check constraint, a key that is not UTF-8 — or a state holds
// what jsonb refuses (NUL), only that partition fails and parks; every
// other partition of the batch commits, once.
func TestQueuedStatementFailureParksOnlyItsPartition(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	pool := devtest.Pool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE odd (wallet text PRIMARY KEY, cents bigint NOT NULL CHECK (cents < 1000000), applied int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	const name = "oddities_pg"
	bad := map[string]string{
		"wallet/w-check":   "violates check constraint",
		"wallet/w-nul":     "NUL",
		"wallet/bad\xffid": "UTF8",
	}
	b.publishWallets(t, 80, 2)
	b.publish(t, "w-check", "MoneyWasAddedToWallet", `{"amount":2000000}`)
	b.publish(t, "w-nul", "MoneyWasAddedToWallet", `{"amount":666}`)
	b.publish(t, "bad\xffid", "MoneyWasAddedToWallet", `{"amount":5}`)
	b.publishWallets(t, 80, 1)
	b.run(t, "r1", oddities(name, projection.Postgres(pool), projection.BatchSize(500)))
	store := projector.NewPGStore(pool, name)
	devtest.Eventually(t, 30*time.Second, func() error {
		parked, _, err := store.Summary(ctx)
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, r := range parked {
			got[r.Key] = r.Parked.Error
		}
		for k, reason := range bad {
			if !strings.Contains(got[k], reason) {
				return fmt.Errorf("%q: parked with %q, want a reason with %q (parked: %v)", k, got[k], reason, got)
			}
		}
		if len(got) != len(bad) {
			return fmt.Errorf("parked %v, want only %d", got, len(bad))
		}
		return nil
	})
	// Every other wallet: its balance, each event applied once.
	devtest.Eventually(t, 30*time.Second, func() error {
		rows, err := pool.Query(ctx, `SELECT wallet, cents, applied FROM odd`)
		if err != nil {
			return err
		}
		defer rows.Close()
		seen := 0
		for rows.Next() {
			var w string
			var cents int64
			var applied int
			if err := rows.Scan(&w, &cents, &applied); err != nil {
				return err
			}
			if w == "w-check" || w == "w-nul" {
				return fmt.Errorf("%s has a row: its partition's writes were not rolled back", w)
			}
			b.mu.Lock()
			want := b.fold["wallet/"+w]
			b.mu.Unlock()
			if cents != want.Cents || applied != 3 {
				return fmt.Errorf("%s: %d cents, %d applied; want %d, 3 (one per deposit)", w, cents, applied, want.Cents)
			}
			seen++
		}
		if seen != 80 {
			return fmt.Errorf("%d rows, want 80", seen)
		}
		return rows.Err()
	})
	// The key that is not UTF-8 is stored encoded and read back as it was.
	rec, err := store.Get(ctx, 0, "wallet/bad\xffid")
	if err != nil || rec == nil || rec.Key != "wallet/bad\xffid" || rec.Parked == nil {
		t.Fatalf("record of the key that is not UTF-8: %+v (%v)", rec, err)
	}
}
