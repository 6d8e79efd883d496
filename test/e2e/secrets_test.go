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

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/pkg/examples"
)

// startTokenNATS starts a nats-server process that admits clients with
// token only.
func startTokenNATS(t *testing.T, token string) (url string, js jetstream.JetStream) {
	t.Helper()
	port, err := devenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "nats.conf")
	body := fmt.Sprintf("server_name: token\nhost: 127.0.0.1\nport: %d\njetstream {\n  store_dir: %q\n}\nauthorization {\n  token: %q\n}\n",
		port, filepath.Join(dir, "store"), token)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "nats-server (token)", bins.build(t).natsServer, nil, "-c", conf)
	url = fmt.Sprintf("nats://127.0.0.1:%d", port)
	var nc *nats.Conn
	devtest.Eventually(t, 30*time.Second, func() error {
		if p.exited() {
			t.Fatalf("nats-server exited: %s", tail(p.stderr.String(), 30))
		}
		nc, err = nats.Connect(url, nats.Token(token))
		return err
	})
	t.Cleanup(nc.Close)
	if js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return url, js
}

// TestTokenNeverPrinted: with NATS_TOKEN and a password in DATABASE_URL, the
// services' debug logs, the status commands' output and the errors of a
// wrong token, of a bad configuration and of an unreachable database name
// neither secret. (TestLeastPrivilege does the same for NATS passwords.)
func TestTokenNeverPrinted(t *testing.T) {
	const token, dbSecret = "tok-S3cret-4711", "pg-Secr3t-0815"
	dbURL := strings.Replace(newDatabase(t), "postgres://postgres@", "postgres://postgres:"+dbSecret+"@", 1)
	if !strings.Contains(dbURL, dbSecret) {
		t.Fatalf("no password put in %s", dbURL)
	}
	pool := openStore(t, dbURL)
	url, js := startTokenNATS(t, token)
	ctx := context.Background()
	debug := func(env map[string]string) map[string]string {
		env["NATS_TOKEN"], env["LOG_LEVEL"] = token, "debug"
		return env
	}
	fenv := debug(feederEnv(dbURL, url, "f"))
	penv := debug(pipelineEnv(dbURL, url, "p1", examples.WalletBalanceName))
	eenv := debug(emitterEnv(dbURL, url, "e1"))
	procs := []*proc{startFeeder(t, "feeder", fenv), startProjector(t, "projector", penv), startEmitter(t, "emitter", eenv)}
	walletDeposits(t, pool, "w-1", 3, 100)
	devtest.Eventually(t, 60*time.Second, func() error {
		if err := examplecheck.Verify(ctx, pool, js, examples.WalletBalanceName); err != nil {
			return err
		}
		return outboxEmpty(ctx, pool)
	})

	with := func(env map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range env {
			out[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	var outputs []string
	for _, p := range procs {
		outputs = append(outputs, p.stderr.String())
	}
	bin := bins.build(t)
	for _, c := range []struct {
		name     string
		path     string
		env      map[string]string
		args     []string
		wantFail bool
	}{
		{"feeder status", bin.feeder, fenv, []string{"status"}, false},
		{"feeder status --json", bin.feeder, fenv, []string{"status", "--json"}, false},
		{"projector status", bin.projector, penv, []string{"status"}, false},
		{"projector status --json", bin.projector, penv, []string{"status", "--json"}, false},
		{"wrong token", bin.feeder, with(fenv, "NATS_TOKEN", token+"x"), []string{"status"}, true},
		{"bad configuration", bin.projector, with(penv, "PROJECTOR_LEASE_TTL", "nope", "NATS_USER", "u"), []string{"run"}, true},
		{"unknown database", bin.emitter, with(eenv, "DATABASE_URL", strings.Replace(dbURL, "/"+lastPathSegment(dbURL), "/no_such_db", 1)), []string{"run"}, true},
	} {
		r := runBinary(t, c.path, c.env, c.args...)
		if failed := r.code != 0; failed != c.wantFail {
			t.Errorf("%s: exit %d\n%s", c.name, r.code, tail(r.stderr, 10))
		}
		outputs = append(outputs, r.stdout, r.stderr)
	}
	for _, out := range outputs {
		for _, secret := range []string{token, dbSecret} {
			if strings.Contains(out, secret) {
				t.Errorf("secret %q printed:\n%s", secret, tail(out, 20))
			}
		}
	}
}

// lastPathSegment is the database name of a postgres:// URL.
func lastPathSegment(u string) string {
	u, _, _ = strings.Cut(u, "?")
	return u[strings.LastIndex(u, "/")+1:]
}
