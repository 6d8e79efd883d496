package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
)

// Least privilege per service, as docs/operations.md documents it: each
// service publishes its own data subjects only, and reaches through the
// JetStream API ($JS.API.…) only the streams and KV buckets it uses; replies
// go to inboxes. The projector's and the emitter's lists grow with the
// projections they run: here wallet_balance and order_fulfilment (PostgreSQL
// read models, whose derived events the emitter publishes;
// order_fulfilment's link to completed_orders), and wallet_ledger_kv (KV
// state: the projector publishes its derived events itself, and to its
// linked stream wallet_ledger). Partition commands come from the projector
// admin user only; the replicas receive them and reply.
var permissionsConf = permissions(permSetup{
	projections: []string{examples.WalletBalanceName, examples.OrderFulfilmentName, kvLedger},
	kvEmitting:  []string{kvLedger},
	links:       []string{examples.CompletedOrdersStream},
	kvLinks:     []string{kvLedgerLink},
})

// The KV-state projection of internal/kvprojector, its linked stream, and
// the deposit it refuses (parking the wallet's partition).
const (
	kvLedger     = "wallet_ledger_kv"
	kvLedgerLink = "wallet_ledger"
	kvPoison     = 13
)

// readAPI is what reading stream s takes: its info, message gets, direct
// gets and consumers (create, info, delete, pull, acknowledge).
func readAPI(s string) []string {
	return []string{"$JS.API.STREAM.INFO." + s, "$JS.API.STREAM.MSG.GET." + s, "$JS.API.DIRECT.GET." + s, "$JS.API.DIRECT.GET." + s + ".>",
		"$JS.API.CONSUMER.*." + s, "$JS.API.CONSUMER.*." + s + ".>", "$JS.API.CONSUMER.MSG.NEXT." + s + ".>", "$JS.ACK." + s + ".>"}
}

// streamAPI is what owning stream (or KV bucket stream) s takes: reading
// it, and creating, updating, purging and deleting it.
func streamAPI(s string) []string { return append(readAPI(s), "$JS.API.STREAM.*."+s) }

// kvAPI is what using KV bucket b takes.
func kvAPI(b string) []string {
	return append(streamAPI(contract.KVStream(b)), contract.KVSubjectPrefix(b)+">")
}

// permSetup is what the services run: the projections of the projector,
// which of them keep their state in KV and emit (the projector publishes
// their derived events), and the linked streams of the others (the
// emitter's) and of those (the projector's).
type permSetup struct {
	projections []string
	kvEmitting  []string
	links       []string
	kvLinks     []string
}

// permissions renders the server's authorization block for setup.
func permissions(setup permSetup) string {
	// Every service publishes its status for the status pages and reads
	// the others'.
	common := append([]string{"$JS.API.INFO", "$JS.FC.>", "_INBOX.>"}, kvAPI(contract.StatusBucket)...)
	feeder := append([]string{contract.AllEvents}, common...)
	feeder = append(feeder, streamAPI(contract.EventsStream)...)
	feeder = append(append(feeder, kvAPI(contract.FeederStateBucket)...), kvAPI(contract.FeederLeaseBucket)...)

	proj := append([]string{}, common...)
	proj = append(append(proj, readAPI(contract.EventsStream)...), kvAPI(contract.RegistryBucket)...)
	// Read-your-writes: replicas publish their progress while someone
	// waits (projector.WaitFor), who asks on jetproj.progress.<name>.
	proj = append(proj, kvAPI(contract.ProgressBucket)...)
	emit := append([]string{contract.AllProjections}, common...)
	emit = append(emit, kvAPI(contract.EmitterLeaseBucket)...)
	for _, n := range setup.projections {
		proj = append(proj, streamAPI(contract.ProjectionStream(n))...)
		proj = append(append(proj, kvAPI(contract.LeaseBucket(n))...), kvAPI(contract.StateBucket(n))...)
		emit = append(emit, readAPI(contract.ProjectionStream(n))...)
	}
	for _, n := range setup.kvEmitting {
		proj = append(proj, contract.ProjectionSubjects(n))
	}
	for _, l := range setup.kvLinks {
		proj = append(append(proj, contract.LinkedSubjects(l)), streamAPI(l)...)
	}
	for _, l := range setup.links {
		emit = append(emit, contract.LinkedSubjects(l))
		emit = append(emit, streamAPI(l)...)
	}
	// The admin user of the projector commands: what the commands reach
	// (they reset, delete and read what the replicas use, and publish what
	// a KV-state projection's records still hold), and the partition
	// commands, which no replica sends.
	admin := append([]string{contract.AllControl, contract.AllProgress}, proj...)
	list := func(subjects []string) string { return `["` + strings.Join(subjects, `", "`) + `"]` }
	return fmt.Sprintf(`
authorization {
  users = [
    {user: admin, password: admin-pw}
    {user: feeder, password: feeder-pw, permissions: {
      publish: {allow: %s}
      subscribe: {allow: ["_INBOX.>"]}
    }}
    {user: projector, password: projector-pw, permissions: {
      publish: {allow: %s}
      subscribe: {allow: %s}
    }}
    {user: projector-admin, password: projector-admin-pw, permissions: {
      publish: {allow: %s}
      subscribe: {allow: ["_INBOX.>"]}
    }}
    {user: emitter, password: emitter-pw, permissions: {
      publish: {allow: %s}
      subscribe: {allow: ["_INBOX.>"]}
    }}
  ]
}
`, list(feeder), list(proj), list([]string{"_INBOX.>", contract.AllControl, contract.AllProgress}), list(admin), list(emit))
}

// startSecuredNATS starts a nats-server process with the users above.
func startSecuredNATS(t *testing.T) (url string, admin jetstream.JetStream) {
	t.Helper()
	port, err := devenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "nats.conf")
	body := fmt.Sprintf("server_name: secured\nhost: 127.0.0.1\nport: %d\njetstream {\n  store_dir: %q\n}\n%s", port, filepath.Join(dir, "store"), permissionsConf)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "nats-server (secured)", bins.build(t).natsServer, nil, "-c", conf)
	url = fmt.Sprintf("nats://127.0.0.1:%d", port)
	var nc *nats.Conn
	devtest.Eventually(t, 30*time.Second, func() error {
		if p.exited() {
			t.Fatalf("nats-server exited: %s", tail(p.stderr.String(), 30))
		}
		nc, err = nats.Connect(url, nats.UserInfo("admin", "admin-pw"))
		return err
	})
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return url, js
}

// refused publishes to subject as user and reports whether the server
// refused it with a permissions violation.
func refused(t *testing.T, url, user, password, subject string) bool {
	t.Helper()
	errs := make(chan error, 4)
	nc, err := nats.Connect(url, nats.UserInfo(user, password), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		errs <- err
	}))
	if err != nil {
		t.Fatalf("%s: %v", user, err)
	}
	defer nc.Close()
	if err := nc.Publish(subject, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	select {
	case err := <-errs:
		return strings.Contains(strings.ToLower(err.Error()), "permissions violation")
	case <-time.After(5 * time.Second):
		return false
	}
}

// TestLeastPrivilege runs the three services as processes, each as its own
// NATS user with only its permissions: the pipeline works end to end —
// including a KV-state projection whose derived events the projector
// publishes itself, to its own stream and a linked one —, and no service
// can publish to another's subjects (the feeder cannot publish to
// project.>, the projector cannot publish to events.> nor to the derived
// events of projections with a PostgreSQL read model). Partition commands
// work from the projector admin user and are refused from the replicas'
// user, which only receives them.
//
// Secrets (the NATS passwords, the password in DATABASE_URL, which the
// trust-authenticated test cluster ignores) never appear in the services'
// logs nor in the status commands' output.
func TestLeastPrivilege(t *testing.T) {
	const dbSecret = "pg-Secr3t-in-DSN"
	dbURL := strings.Replace(newDatabase(t), "postgres://postgres@", "postgres://postgres:"+dbSecret+"@", 1)
	pool := openStore(t, dbURL)
	url, js := startSecuredNATS(t)
	ctx := context.Background()
	auth := func(env map[string]string, user string) map[string]string {
		env = maps.Clone(env)
		env["NATS_USER"], env["NATS_PASSWORD"] = user, user+"-pw"
		return env
	}
	fenv := auth(feederEnv(dbURL, url, "f"), "feeder")
	fenv["LOG_LEVEL"] = "debug"
	penv := auth(pipelineEnv(dbURL, url, "p1", examples.WalletBalanceName, examples.OrderFulfilmentName, kvLedger), "projector")
	penv["LOG_LEVEL"] = "debug"
	// The commands as an operator runs them: the replicas' environment
	// with the admin user.
	aenv := auth(penv, "projector-admin")
	eenv := auth(emitterEnv(dbURL, url, "e1"), "emitter")
	eenv["LOG_LEVEL"] = "debug"
	kvp := bins.build(t).kvProjector
	procs := []*proc{startFeeder(t, "feeder", fenv), startProc(t, "projector", kvp, penv, "run"), startEmitter(t, "emitter", eenv)}

	const wallets = 10
	for i := range wallets {
		walletDeposits(t, pool, fmt.Sprintf("w-%d", i), 3, 100)
	}
	// One wallet's partition of wallet_ledger_kv is parked: 100, then the
	// refused deposit, then 100.
	walletDeposits(t, pool, "w-poison", 1, 100)
	walletDeposits(t, pool, "w-poison", 1, kvPoison)
	walletDeposits(t, pool, "w-poison", 1, 100)
	if err := examples.AppendOrderFlow(ctx, pool, examples.Order{ID: "o-1", Customer: "acme", Total: 100, Carrier: "dhl"}, examples.OrderSteps...); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 60*time.Second, func() error {
		if err := examplecheck.Verify(ctx, pool, js, examples.WalletBalanceName, examples.OrderFulfilmentName); err != nil {
			return err
		}
		if err := outboxEmpty(ctx, pool); err != nil {
			return err
		}
		if err := examplecheck.VerifyDerived(ctx, pool, js, examples.OrderFulfilmentName); err != nil {
			return err
		}
		// The projector published wallet_ledger_kv's derived events: each
		// wallet's last balance, on the own stream and the linked one.
		for i := range wallets {
			if err := lastBalance(ctx, js, fmt.Sprintf("w-%d", i), 300); err != nil {
				return err
			}
		}
		if n := streamMsgCount(t, js, kvLedgerLink); n < wallets {
			return fmt.Errorf("linked stream %s holds %d messages, want at least %d", kvLedgerLink, n, wallets)
		}
		return nil
	})
	devtest.Eventually(t, 30*time.Second, func() error { return parked(t, penv, "wallet/w-poison", true) })

	// The replicas' user may not send partition commands: the command
	// fails and says why, and the partition stays parked.
	denied := runBinary(t, kvp, penv, "skip", kvLedger, "wallet/w-poison")
	if denied.code != 1 || !strings.Contains(denied.stderr, "may not send partition commands") || !strings.Contains(denied.stderr, "jetproj.control."+kvLedger) {
		t.Errorf("skip as the projector user: exit %d, want 1 naming the refused subject\n%s", denied.code, tail(denied.stderr, 10))
	}
	if err := parked(t, penv, "wallet/w-poison", true); err != nil {
		t.Error(err)
	}
	// The admin user's command reaches the replica owning the partition,
	// which skips the refused deposit and goes on: the last 100 is applied.
	if r := runBinary(t, kvp, aenv, "skip", kvLedger, "wallet/w-poison"); r.code != 0 {
		t.Fatalf("skip as the projector admin: exit %d\n%s%s", r.code, r.stdout, tail(r.stderr, 10))
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		if err := parked(t, penv, "wallet/w-poison", false); err != nil {
			return err
		}
		return lastBalance(ctx, js, "w-poison", 200)
	})
	derived := streamMsgCount(t, js, contract.ProjectionStream(examples.WalletBalanceName))
	kvDerived := streamMsgCount(t, js, contract.ProjectionStream(kvLedger))
	events := streamMsgCount(t, js, contract.EventsStream)

	for _, c := range []struct{ user, subject string }{
		{"feeder", "project.wallet_balance.wallet.w-1"},
		{"feeder", "project." + kvLedger + ".wallet.w-1"},
		{"projector", "events.wallet.w-1"},
		{"projector", "project.wallet_balance.wallet.w-1"},
		{"emitter", "events.wallet.w-1"},
		// Partition commands: from the admin user only.
		{"projector", "jetproj.control." + kvLedger},
		{"projector", "jetproj.control.wallet_balance"},
		{"feeder", "jetproj.control.wallet_balance"},
		{"emitter", "jetproj.control.wallet_balance"},
		{"projector-admin", "events.wallet.w-1"},
		// The JetStream API and KV of the others' streams and buckets.
		{"feeder", "$JS.API.STREAM.DELETE." + contract.ProjectionStream(examples.WalletBalanceName)},
		{"feeder", "$KV.jetproj_leases_wallet_balance.s.0"},
		{"projector", "$JS.API.STREAM.DELETE.EVENTS"},
		{"projector", "$KV.jetproj_feeder_leases.events"},
		{"emitter", "$JS.API.STREAM.PURGE.EVENTS"},
		{"emitter", "$KV.jetproj_projections.wallet_balance"},
	} {
		if !refused(t, url, c.user, c.user+"-pw", c.subject) {
			t.Errorf("%s may publish to %s", c.user, c.subject)
		}
	}
	// The control cases: allowed subjects are not refused (a partition
	// command for a projection no replica runs here reaches nobody).
	if refused(t, url, "projector", "projector-pw", "_INBOX.control") {
		t.Error("the check refuses an allowed subject")
	}
	if refused(t, url, "projector-admin", "projector-admin-pw", "jetproj.control.nobody") {
		t.Error("the projector admin may not publish partition commands")
	}
	// No secret in logs or status output, and nothing the services or
	// their status commands did was refused: the permissions are enough.
	var outputs []string
	for _, p := range procs {
		outputs = append(outputs, p.stderr.String())
	}
	for i, r := range []result{
		runBinary(t, bins.build(t).feeder, fenv, "status"),
		runBinary(t, bins.build(t).feeder, fenv, "status", "--json"),
		runBinary(t, kvp, penv, "status"),
		runBinary(t, kvp, penv, "status", "--json"),
		runBinary(t, kvp, aenv, "status"),
		runBinary(t, kvp, map[string]string{"DATABASE_URL": dbURL, "NATS_URL": url, "NATS_PASSWORD": "projector-pw", "PROJECTOR_LEASE_TTL": "nope"}, "status"),
	} {
		if i < 5 && r.code != 0 {
			t.Errorf("status command %d: exit %d\n%s", i, r.code, tail(r.stderr, 10))
		}
		outputs = append(outputs, r.stdout, r.stderr)
	}
	for _, out := range outputs {
		if strings.Contains(strings.ToLower(out), "permissions violation") {
			t.Errorf("a service was refused what it needs:\n%s", tail(out, 20))
		}
	}
	for _, out := range append(outputs, denied.stdout, denied.stderr) {
		for _, secret := range []string{dbSecret, "feeder-pw", "projector-pw", "projector-admin-pw", "emitter-pw"} {
			if strings.Contains(out, secret) {
				t.Errorf("secret %q printed:\n%s", secret, tail(out, 20))
			}
		}
	}
	for stream, n := range map[string]uint64{contract.ProjectionStream(examples.WalletBalanceName): derived, contract.ProjectionStream(kvLedger): kvDerived, contract.EventsStream: events} {
		if got := streamMsgCount(t, js, stream); got != n {
			t.Errorf("%s grew from %d to %d messages", stream, n, got)
		}
	}
}

// lastBalance checks the last derived event of wallet_ledger_kv for a
// wallet.
func lastBalance(ctx context.Context, js jetstream.JetStream, wallet string, want int64) error {
	s, err := js.Stream(ctx, contract.ProjectionStream(kvLedger))
	if err != nil {
		return err
	}
	m, err := s.GetLastMsgForSubject(ctx, "project."+kvLedger+".wallet."+wallet)
	if err != nil {
		return fmt.Errorf("%s: %w", wallet, err)
	}
	var ev examples.WalletBalanceWasChanged
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return err
	}
	if ev.WalletID != wallet || ev.Balance != want {
		return fmt.Errorf("%s: last derived event %s, want balance %d", wallet, m.Data, want)
	}
	return nil
}

// parked reports whether `projector status --json` shows wallet_ledger_kv's
// partition parked as wanted.
func parked(t *testing.T, env map[string]string, partition string, want bool) error {
	t.Helper()
	r := runBinary(t, bins.build(t).kvProjector, env, "status", "--json", kvLedger)
	if r.code != 0 {
		return fmt.Errorf("status: exit %d: %s", r.code, tail(r.stderr, 5))
	}
	var sts []projector.Status
	if err := json.Unmarshal([]byte(r.stdout), &sts); err != nil {
		return err
	}
	got := false
	for _, st := range sts {
		for _, rec := range st.Parked {
			got = got || rec.Key == partition
		}
	}
	if got != want {
		return fmt.Errorf("%s parked: %v, want %v", partition, got, want)
	}
	return nil
}
