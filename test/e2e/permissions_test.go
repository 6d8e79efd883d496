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
)

// Least privilege per service, as docs/operations.md documents it: each
// publishes its own data subjects only. The JetStream API ($JS.API.>) and
// the KV subjects the service uses stay open to it; replies go to inboxes.
const permissionsConf = `
authorization {
  users = [
    {user: admin, password: admin-pw}
    {user: feeder, password: feeder-pw, permissions: {
      publish: {allow: ["events.>", "$JS.API.>", "$KV.jetproj_feeder_state.>", "$KV.jetproj_feeder_leases.>", "$JS.FC.>", "_INBOX.>"]}
      subscribe: {allow: ["_INBOX.>"]}
    }}
    {user: projector, password: projector-pw, permissions: {
      publish: {allow: ["$JS.API.>", "$KV.>", "$JS.FC.>", "jetproj.control.>", "_INBOX.>"]}
      subscribe: {allow: ["_INBOX.>", "jetproj.control.>"]}
    }}
    {user: emitter, password: emitter-pw, permissions: {
      publish: {allow: ["project.>", "completed_orders.>", "$JS.API.>", "$KV.jetproj_emitter_leases.>", "$JS.FC.>", "_INBOX.>"]}
      subscribe: {allow: ["_INBOX.>"]}
    }}
  ]
}
`

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
	} {
		if !refused(t, url, c.user, c.user+"-pw", c.subject) {
			t.Errorf("%s may publish to %s", c.user, c.subject)
		}
	}
	// The control case: an allowed subject is not refused.
	if refused(t, url, "projector", "projector-pw", "_INBOX.control") {
		t.Error("the check refuses an allowed subject")
	}
	// No secret in logs or status output.
	var outputs []string
	for _, p := range procs {
		outputs = append(outputs, p.stderr.String())
	}
	for _, r := range []result{
		runBinary(t, bins.build(t).feeder, fenv, "status"),
		runBinary(t, bins.build(t).feeder, fenv, "status", "--json"),
		runBinary(t, bins.build(t).projector, penv, "status"),
		runBinary(t, bins.build(t).projector, penv, "status", "--json"),
		runBinary(t, bins.build(t).projector, map[string]string{"DATABASE_URL": dbURL, "NATS_URL": url, "NATS_PASSWORD": "projector-pw", "PROJECTOR_LEASE_TTL": "nope"}, "status"),
	} {
		outputs = append(outputs, r.stdout, r.stderr)
	}
	for _, out := range outputs {
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
