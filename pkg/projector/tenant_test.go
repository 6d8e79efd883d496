package projector_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// TestTenantsNeverSeeEachOthersEvents routes each tenant to its own
// database: every row in a tenant's database belongs to that tenant, and an
// event of an unknown tenant parks its partition.
func TestTenantsNeverSeeEachOthersEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	pools := map[string]*pgxpool.Pool{}
	for _, tenant := range []string{"acme", "globex"} {
		pool := devtest.Pool(t)
		pools[tenant] = pool
	}
	p := projection.New[struct{}]("tenant_balances", projection.FromAggregates("wallet"), projection.PostgresPerTenant(pools),
		projection.Retries(2, 10*time.Millisecond, 20*time.Millisecond),
		projection.OnInit(func(ctx context.Context, tx projectionTx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS balances (wallet text PRIMARY KEY, tenant text NOT NULL, cents bigint NOT NULL)`)
			return err
		}),
		projection.OnResetPartition(func(ctx context.Context, tx projectionTx, partition string) error {
			// A nil tx panics: the tenant's transaction must be given.
			_, err := tx.Exec(ctx, `DELETE FROM balances WHERE wallet = $1`, strings.TrimPrefix(partition, "wallet/"))
			return err
		}),
		projection.OnDelete(func(ctx context.Context, tx projectionTx) error {
			_, err := tx.Exec(ctx, `DROP TABLE IF EXISTS balances`)
			return err
		}))
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[MoneyWasAddedToWallet]) error {
		_, err := c.Tx().Exec(ctx, `INSERT INTO balances VALUES ($1, $2, $3) ON CONFLICT (wallet) DO UPDATE SET cents = balances.cents + $3`,
			e.AggregateID, e.Tenant(), e.Data.Amount)
		return err
	})
	pos := int64(0)
	publish := func(tenant, wallet string, version int64) {
		pos++
		meta := eventstore.Metadata{}
		if tenant != "" {
			meta["tenant"] = []byte(fmt.Sprintf("%q", tenant))
		}
		m, err := eventmsg.New("events", eventstore.Event{Position: pos, TransactionID: uint64(pos), AggregateType: "wallet", AggregateID: wallet,
			Version: version, Type: "MoneyWasAddedToWallet", Payload: []byte(`{"amount":10}`), Metadata: meta, RecordedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for v := int64(1); v <= 5; v++ {
		for i := range 20 {
			tenant := []string{"acme", "globex"}[i%2]
			publish(tenant, fmt.Sprintf("%s-w%d", tenant, i), v)
		}
	}
	publish("initech", "initech-w1", 1)
	if err := projectorInit(ctx, b, p); err != nil {
		t.Fatal(err)
	}
	replicas := []*running{b.run(t, "r1", p)}
	devtest.Eventually(t, 30*time.Second, func() error {
		for tenant, pool := range pools {
			var n, wrong int
			var total int64
			err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE tenant <> $1 OR wallet NOT LIKE $1 || '-%'), coalesce(sum(cents), 0) FROM balances`, tenant).Scan(&n, &wrong, &total)
			if err != nil {
				return err
			}
			if wrong != 0 {
				t.Fatalf("tenant %s's database has %d rows of another tenant", tenant, wrong)
			}
			if n != 10 || total != 500 {
				return fmt.Errorf("tenant %s: %d rows totalling %d, want 10 totalling 500", tenant, n, total)
			}
		}
		return nil
	})
	devtest.Eventually(t, 20*time.Second, func() error {
		var parked []byte
		err := pools["acme"].QueryRow(ctx, `SELECT parked FROM jetproj.partitions WHERE projection = 'tenant_balances' AND partition = 'wallet/initech-w1'`).Scan(&parked)
		if err != nil {
			return err
		}
		if len(parked) == 0 {
			return fmt.Errorf("initech-w1 not parked")
		}
		return nil
	})
	// Its record is kept by the first tenant's database but marked with
	// the tenant it names: read back, it is not acme's.
	parked, _, err := projector.NewTenantStore(pools, "tenant_balances").Summary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) != 1 || parked[0].Key != "wallet/initech-w1" || parked[0].Tenant != "initech" || !strings.Contains(parked[0].Parked.Error, `unknown tenant "initech"`) {
		t.Fatalf("parked records %+v; want wallet/initech-w1 of tenant initech, parked for its unknown tenant", parked)
	}

	// Rebuilding one tenant partition runs its reset hook in that tenant's
	// database (issue 14: it was handed a nil transaction), then replays.
	if _, err := pools["globex"].Exec(ctx, `UPDATE balances SET cents = -1 WHERE wallet = 'globex-w1'`); err != nil {
		t.Fatal(err)
	}
	if err := b.admin().RebuildPartition(ctx, p, "wallet/globex-w1"); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 20*time.Second, func() error {
		var cents int64
		if err := pools["globex"].QueryRow(ctx, `SELECT cents FROM balances WHERE wallet = 'globex-w1'`).Scan(&cents); err != nil {
			return err
		}
		if cents != 50 {
			return fmt.Errorf("globex-w1 rebuilt to %d cents, want 50", cents)
		}
		return nil
	})
	// Deleting removes positions, state and outbox in every tenant's
	// database (issue 14: they stayed, and a new init resumed from them).
	for _, r := range replicas {
		r.stop(t)
	}
	if err := b.admin().Delete(ctx, p); err != nil {
		t.Fatal(err)
	}
	for tenant, pool := range pools {
		var n int
		if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM jetproj.partitions WHERE projection = 'tenant_balances')
     + (SELECT count(*) FROM jetproj.slots WHERE projection = 'tenant_balances')
     + (SELECT count(*) FROM jetproj.outbox WHERE projection = 'tenant_balances')`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("tenant %s keeps %d rows of the deleted projection", tenant, n)
		}
	}
}
