package emitter_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
)

// tenantBalance is wallet_balance with each tenant's read model and
// derived events in the tenant's own database.
func tenantBalance(pools map[string]*pgxpool.Pool) *projection.Projection[Balance] {
	p := projection.New[Balance]("wallet_balance", projection.FromAggregates("wallet"), projection.PostgresPerTenant(pools),
		projection.OnInit(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS wallet_balance (wallet_id text PRIMARY KEY, balance bigint NOT NULL)`)
			return err
		}))
	projection.On(p, func(ctx context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasAddedToWallet]) error {
		c.State.Cents += e.Data.Amount
		_, err := c.Tx().Exec(ctx, `INSERT INTO wallet_balance VALUES ($1, $2) ON CONFLICT (wallet_id) DO UPDATE SET balance = $2`, e.AggregateID, c.State.Cents)
		return err
	})
	projection.OnFlush(p, func(_ context.Context, c *projection.Context[Balance]) error {
		return c.Emit("WalletBalanceWasChanged", map[string]any{"walletId": c.Partition(), "balance": c.State.Cents})
	})
	return p
}

// depositFor publishes a deposit of tenant's.
func (b *bundle) depositFor(t *testing.T, tenant, wallet string, amount int64) {
	t.Helper()
	b.pos++
	b.ver[wallet]++
	b.want["wallet/"+wallet] += amount
	md := eventstore.Metadata{}
	md["tenant"], _ = json.Marshal(tenant)
	m, err := eventmsg.New("events", eventstore.Event{Position: b.pos, TransactionID: uint64(b.pos), AggregateType: "wallet", AggregateID: wallet,
		Version: b.ver[wallet], Type: "MoneyWasAddedToWallet", Payload: []byte(fmt.Sprintf(`{"amount":%d}`, amount)), RecordedAt: time.Now(), Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// One emitter relays the outboxes of two tenant databases (PostgresPerTenant
// writes each tenant's derived events to its own database): every derived
// event exactly once and each partition's in order, through kills of the
// emitter and the projector; both outboxes end empty.
func TestTenantDatabasesRelayedByOneEmitter(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	b := setup(t) // b.pool: tenant t1's database
	ctx := context.Background()
	other := devtest.Pool(t)
	pools := map[string]*pgxpool.Pool{"t1": b.pool, "t2": other}
	tenantOf := func(i int) string { return []string{"t1", "t2"}[i%2] }
	emit := func() (stop, kill func()) {
		return b.start(t, func(ctx context.Context, nc *nats.Conn) error {
			e, err := emitter.NewDatabases(emitter.Config{LeaseTTL: 2 * time.Second},
				[]emitter.Database{{Name: "t1", Pool: b.pool}, {Name: "t2", Pool: other}}, nc, nil, nil)
			if err != nil {
				return err
			}
			return e.Run(ctx)
		})
	}
	const wallets = 20
	for i := range wallets {
		for d := range 3 {
			b.depositFor(t, tenantOf(i), fmt.Sprintf("w%d", i), int64(100+d))
		}
	}
	_, killProjector := b.projector(t, tenantBalance(pools))
	_, killEmitter := emit()
	devtest.Eventually(t, 30*time.Second, func() error {
		seen := map[string]bool{}
		for _, d := range b.derived(t) {
			w, _ := strconv.Atoi(strings.TrimPrefix(d.subject[strings.LastIndex(d.subject, ".")+1:], "w"))
			seen[tenantOf(w)] = true
		}
		if !seen["t1"] || !seen["t2"] {
			return fmt.Errorf("derived events of tenants %v only", seen)
		}
		return nil
	})
	killEmitter()
	for i := range wallets {
		b.depositFor(t, tenantOf(i), fmt.Sprintf("w%d", i), 7)
	}
	killProjector()
	b.projector(t, tenantBalance(pools))
	emit()
	for i := range wallets {
		b.depositFor(t, tenantOf(i), fmt.Sprintf("w%d", i), 11)
	}
	b.waitFinals(t)
	// Each partition's events in emission order (finals checked that
	// none appears twice).
	last := map[string]int{}
	for _, d := range b.derived(t) {
		seq, err := strconv.Atoi(d.id[strings.LastIndex(d.id, ":")+1:])
		if err != nil {
			t.Fatal(err)
		}
		if seq <= last[d.subject] {
			t.Fatalf("%s: derived event %d after %d", d.subject, seq, last[d.subject])
		}
		last[d.subject] = seq
	}
	for name, p := range pools {
		// A round deletes what the round before it relayed: the last
		// rows go a round after their events were seen.
		devtest.Eventually(t, 10*time.Second, func() error {
			var n int
			if err := p.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&n); err != nil || n != 0 {
				return fmt.Errorf("tenant %s: %d rows left in its outbox (%v)", name, n, err)
			}
			return nil
		})
		var rows int
		if err := p.QueryRow(ctx, `SELECT count(*) FROM wallet_balance`).Scan(&rows); err != nil || rows != wallets/2 {
			t.Fatalf("tenant %s: %d wallets in its read model (%v); want %d", name, rows, err, wallets/2)
		}
	}
}
