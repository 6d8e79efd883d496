package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/devenv"
	"github.com/jetproj/jetproj/pkg/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
	"github.com/jetproj/jetproj/pkg/statuspage"
)

// Least privilege per service, as docs/operations.md documents it: each
// service publishes its own data subjects only, and reaches through the
// JetStream API ($JS.API.…) only the streams and KV buckets it uses; replies
// go to inboxes. The projector's and the emitter's lists grow with the
// projections they run (here wallet_balance and order_fulfilment, which
// links to completed_orders).
var permissionsConf = permissions(
	[]string{examples.WalletBalanceName, examples.OrderFulfilmentName},
	[]string{examples.CompletedOrdersStream})

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
func kvAPI(b string) []string { return append(streamAPI("KV_"+b), "$KV."+b+".>") }

// permissions renders the server's authorization block for the services
// running projections, whose derived events link to the linked streams.
func permissions(projections, linked []string) string {
	// Every service publishes its status for the status pages and reads
	// the others'.
	common := append([]string{"$JS.API.INFO", "$JS.FC.>", "_INBOX.>"}, kvAPI(statuspage.Bucket)...)
	feeder := append([]string{"events.>"}, common...)
	feeder = append(feeder, streamAPI("EVENTS")...)
	feeder = append(append(feeder, kvAPI("jetproj_feeder_state")...), kvAPI("jetproj_feeder_leases")...)

	proj := append([]string{"jetproj.control.>"}, common...)
	proj = append(append(proj, readAPI("EVENTS")...), kvAPI("jetproj_projections")...)
	emit := append([]string{"project.>"}, common...)
	emit = append(emit, kvAPI("jetproj_emitter_leases")...)
	for _, n := range projections {
		proj = append(proj, streamAPI(projector.OwnStream(n))...)
		proj = append(append(proj, kvAPI("jetproj_leases_"+n)...), kvAPI("jetproj_state_"+n)...)
		emit = append(emit, readAPI(projector.OwnStream(n))...)
	}
	for _, l := range linked {
		emit = append(emit, strings.ToLower(l)+".>")
		emit = append(emit, streamAPI(l)...)
	}
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
      subscribe: {allow: ["_INBOX.>", "jetproj.control.>"]}
    }}
    {user: emitter, password: emitter-pw, permissions: {
      publish: {allow: %s}
      subscribe: {allow: ["_INBOX.>"]}
    }}
  ]
}
`, list(feeder), list(proj), list(emit))
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
// NATS user with only its permissions: the pipeline works end to end, and
// no service can publish to another's subjects (the feeder cannot publish to
// project.>, the projector cannot publish to events.> nor project.>).
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
		env["NATS_USER"], env["NATS_PASSWORD"] = user, user+"-pw"
		return env
	}
	fenv := auth(feederEnv(dbURL, url, "f"), "feeder")
	fenv["LOG_LEVEL"] = "debug"
	penv := auth(pipelineEnv(dbURL, url, "p1", examples.WalletBalanceName, examples.OrderFulfilmentName), "projector")
	penv["LOG_LEVEL"] = "debug"
	eenv := auth(emitterEnv(dbURL, url, "e1"), "emitter")
	eenv["LOG_LEVEL"] = "debug"
	procs := []*proc{startFeeder(t, "feeder", fenv), startProjector(t, "projector", penv), startEmitter(t, "emitter", eenv)}

	for i := range 10 {
		walletDeposits(t, pool, fmt.Sprintf("w-%d", i), 3, 100)
	}
	if err := examples.AppendOrderFlow(ctx, pool, examples.Order{ID: "o-1", Customer: "acme", Total: 100, Carrier: "dhl"}, examples.OrderSteps...); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 60*time.Second, func() error {
		if err := examples.Verify(ctx, pool, js, examples.WalletBalanceName, examples.OrderFulfilmentName); err != nil {
			return err
		}
		if err := outboxEmpty(ctx, pool); err != nil {
			return err
		}
		return examples.VerifyDerived(ctx, pool, js, examples.OrderFulfilmentName)
	})
	derived := streamMsgCount(t, js, projector.OwnStream(examples.WalletBalanceName))
	events := streamMsgCount(t, js, "EVENTS")

	for _, c := range []struct{ user, subject string }{
		{"feeder", "project.wallet_balance.wallet.w-1"},
		{"projector", "events.wallet.w-1"},
		{"projector", "project.wallet_balance.wallet.w-1"},
		{"emitter", "events.wallet.w-1"},
		// The JetStream API and KV of the others' streams and buckets.
		{"feeder", "$JS.API.STREAM.DELETE." + projector.OwnStream(examples.WalletBalanceName)},
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
	// The control case: an allowed subject is not refused.
	if refused(t, url, "projector", "projector-pw", "_INBOX.control") {
		t.Error("the check refuses an allowed subject")
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
		runBinary(t, bins.build(t).projector, penv, "status"),
		runBinary(t, bins.build(t).projector, penv, "status", "--json"),
		runBinary(t, bins.build(t).projector, map[string]string{"DATABASE_URL": dbURL, "NATS_URL": url, "NATS_PASSWORD": "projector-pw", "PROJECTOR_LEASE_TTL": "nope"}, "status"),
	} {
		if i < 4 && r.code != 0 {
			t.Errorf("status command %d: exit %d\n%s", i, r.code, tail(r.stderr, 10))
		}
		outputs = append(outputs, r.stdout, r.stderr)
	}
	for _, out := range outputs {
		if strings.Contains(strings.ToLower(out), "permissions violation") {
			t.Errorf("a service was refused what it needs:\n%s", tail(out, 20))
		}
		for _, secret := range []string{dbSecret, "feeder-pw", "projector-pw", "emitter-pw"} {
			if strings.Contains(out, secret) {
				t.Errorf("secret %q printed:\n%s", secret, tail(out, 20))
			}
		}
	}
	if n := streamMsgCount(t, js, projector.OwnStream(examples.WalletBalanceName)); n != derived {
		t.Errorf("%s grew from %d to %d messages", projector.OwnStream(examples.WalletBalanceName), derived, n)
	}
	if n := streamMsgCount(t, js, "EVENTS"); n != events {
		t.Errorf("EVENTS grew from %d to %d messages", events, n)
	}
}
