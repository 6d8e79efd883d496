package emittersvc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/emittersvc"
	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// The service relays DATABASE_URL's outbox and each of
// EMITTER_TENANT_DATABASE_URLS', and its status page names the stalled
// subjects with their database and since when.
func TestTenantDatabasesAndStalledSubjectsOnThePage(t *testing.T) {
	ctx := context.Background()
	n := devtest.NATS(t)
	_, js := devtest.Connect(t, n)
	urls := []string{devtest.Postgres(t), devtest.Postgres(t)}
	var pools []*pgxpool.Pool
	for _, u := range urls {
		p, err := pgxpool.New(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		if err := projector.NewPGStore(p, "wallet_balance").Init(ctx); err != nil {
			t.Fatal(err)
		}
		pools = append(pools, p)
	}
	def := projection.New[struct{}]("wallet_balance", projection.FromAggregates("wallet"), projection.Postgres(pools[0]))
	if err := projector.NewAdmin(js, projector.AdminOptions{}).Init(ctx, def); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "foreign", Subjects: []string{"foreign.>"}}); err != nil {
		t.Fatal(err)
	}
	insert := func(p *pgxpool.Pool, wallet, link string) {
		t.Helper()
		if _, err := p.Exec(ctx, `INSERT INTO jetproj.outbox (projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq, link_to)
VALUES ('wallet_balance', $1, $2, '', 1, 'WalletBalanceWasChanged', '{}', 1, $3)`,
			"wallet/"+wallet, projector.EmitSubject("wallet_balance", "wallet/"+wallet), link); err != nil {
			t.Fatal(err)
		}
	}
	insert(pools[0], "a", "")
	insert(pools[1], "b", "")
	insert(pools[1], "stuck", "foreign") // refused: a stream jetproj did not create
	port, err := devenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	env := map[string]string{
		"DATABASE_URL":                 urls[0],
		"EMITTER_TENANT_DATABASE_URLS": urls[1],
		"NATS_URL":                     n.URL(),
		"OPS_ADDR":                     addr,
		"OPS_STATUS_INTERVAL":          "500ms",
		"EMITTER_LEASE_TTL":            "2s",
	}
	runCtx, cancel := context.WithCancel(ctx)
	code := make(chan int, 1)
	var stderr devtest.LogBuffer
	go func() { code <- emittersvc.Main(runCtx, nil, env, &strings.Builder{}, &stderr) }()
	defer func() {
		cancel()
		if c := <-code; c != 0 {
			t.Errorf("exit %d\n%s", c, stderr.String())
		}
	}()
	s, err := js.Stream(ctx, contract.ProjectionStream("wallet_balance"))
	if err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		for _, w := range []string{"a", "b"} {
			if _, err := s.GetLastMsgForSubject(ctx, projector.EmitSubject("wallet_balance", "wallet/"+w)); err != nil {
				return fmt.Errorf("wallet %s's event not published: %w", w, err)
			}
		}
		return nil
	})
	stuck := projector.EmitSubject("wallet_balance", "wallet/stuck")
	tenantDB := "/" + pools[1].Config().ConnConfig.Database
	devtest.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get("http://" + addr + statuspage.StatusPath)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var v statuspage.View
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return err
		}
		if len(v.Emitters) != 1 {
			return fmt.Errorf("%d emitters on the page", len(v.Emitters))
		}
		e := v.Emitters[0]
		if e.Stalled != 1 || len(e.StalledSubjects) != 1 {
			return fmt.Errorf("emitter view %+v; want one stalled subject", e)
		}
		st := e.StalledSubjects[0]
		if st.Subject != stuck || !strings.HasSuffix(st.Database, tenantDB) ||
			st.Since.IsZero() || time.Since(st.Since) > time.Minute || !strings.Contains(st.Error, "not a jetproj linked stream") {
			return fmt.Errorf("stalled subject %+v; want %s of the tenant database, since a moment, with its error", st, stuck)
		}
		if e.Backlog != 1 {
			return fmt.Errorf("backlog %d; want the stalled row", e.Backlog)
		}
		return nil
	})
	if _, err := s.GetLastMsgForSubject(ctx, stuck); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("the stalled subject's event was published: %v", err)
	}
}

// `emitter dead-letters` lists the dead-lettered subjects of every
// database and `emitter requeue <subject>` moves them back to the outbox,
// with their ids.
func TestDeadLetterCommands(t *testing.T) {
	ctx := context.Background()
	urls := []string{devtest.Postgres(t), devtest.Postgres(t)}
	for i, u := range urls {
		p, err := pgxpool.New(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := projector.NewPGStore(p, "wallet_balance").Init(ctx); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			if _, err := p.Exec(ctx, `INSERT INTO jetproj.outbox_dead (id, projection, partition, subject, msg_id, emit_seq, event_type, payload, source_seq, reason)
VALUES (41, 'wallet_balance', 'wallet/x', 'project.wallet_balance.wallet.x', '', 1, 'WalletBalanceWasChanged', '{}', 1, 'refused for good: too big')`); err != nil {
				t.Fatal(err)
			}
			defer func() {
				var id int64
				if err := p.QueryRow(ctx, `SELECT id FROM jetproj.outbox WHERE subject = 'project.wallet_balance.wallet.x'`).Scan(&id); err != nil || id != 41 {
					t.Errorf("requeued row: id %d, %v; want it back in the outbox with its id", id, err)
				}
			}()
		}
	}
	env := map[string]string{"DATABASE_URL": urls[0], "EMITTER_TENANT_DATABASE_URLS": urls[1], "NATS_URL": "nats://127.0.0.1:1"}
	run := func(args ...string) (int, string) {
		var out, errs strings.Builder
		code := emittersvc.Main(ctx, args, env, &out, &errs)
		return code, out.String() + errs.String()
	}
	if code, out := run("dead-letters"); code != 0 || !strings.Contains(out, "project.wallet_balance.wallet.x") || !strings.Contains(out, "refused for good: too big") {
		t.Fatalf("dead-letters: exit %d\n%s", code, out)
	}
	if code, out := run("requeue", "project.wallet_balance.wallet.x"); code != 0 || !strings.Contains(out, "requeued 1") {
		t.Fatalf("requeue: exit %d\n%s", code, out)
	}
	if code, out := run("requeue", "project.wallet_balance.wallet.x"); code != 1 || !strings.Contains(out, "no dead-lettered events") {
		t.Fatalf("requeue again: exit %d\n%s", code, out)
	}
	if code, out := run("dead-letters"); code != 0 || strings.Contains(out, "wallet.x") {
		t.Fatalf("dead-letters after the requeue: exit %d\n%s", code, out)
	}
}
