package emittersvc_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/emittersvc"
)

func TestBadConfigurationListsEveryProblem(t *testing.T) {
	var out, errs bytes.Buffer
	code := emittersvc.Main(context.Background(), nil, map[string]string{
		"EMITTER_BATCH_SIZE": "0", "EMITTER_LEASE_TTL": "10ms", "EMITTER_POLL": "1s",
	}, &out, &errs)
	if code != 2 {
		t.Fatalf("exit %d, want 2\n%s", code, errs.String())
	}
	for _, want := range []string{"DATABASE_URL", "EMITTER_BATCH_SIZE", "EMITTER_LEASE_TTL", "EMITTER_POLL"} {
		if !strings.Contains(errs.String(), want) {
			t.Errorf("no problem reported for %s:\n%s", want, errs.String())
		}
	}
}

// Settings internal/emitter takes without bounds are checked by the service:
// each problem is listed, with its variable.
func TestBadConfigurationBounds(t *testing.T) {
	var out, errs bytes.Buffer
	code := emittersvc.Main(context.Background(), nil, map[string]string{
		"DATABASE_URL": "postgres://localhost/x", "NATS_URL": "nats://localhost:4222",
		"EMITTER_STREAM_REPLICAS": "2", "EMITTER_NAME": "a.b>", "EMITTER_BATCH_SIZE": "1000000", "DATABASE_MAX_CONNS": "5000",
	}, &out, &errs)
	if code != 2 {
		t.Fatalf("exit %d, want 2\n%s", code, errs.String())
	}
	for _, want := range []string{
		"EMITTER_STREAM_REPLICAS: 2: want 1, 3 or 5",
		`EMITTER_NAME: "a.b>": want 1-64 characters of [A-Za-z0-9_-]`,
		"EMITTER_BATCH_SIZE: 1000000: want at most 10000",
		"DATABASE_MAX_CONNS: 5000, want at most 1000",
	} {
		if !strings.Contains(errs.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs.String())
		}
	}
	for _, v := range []string{"0", "-1"} {
		errs.Reset()
		code := emittersvc.Main(context.Background(), nil, map[string]string{
			"DATABASE_URL": "postgres://localhost/x", "NATS_URL": "nats://localhost:4222", "EMITTER_STREAM_REPLICAS": v,
		}, &out, &errs)
		if code != 2 || !strings.Contains(errs.String(), "EMITTER_STREAM_REPLICAS: "+v) {
			t.Errorf("EMITTER_STREAM_REPLICAS=%s: exit %d\n%s", v, code, errs.String())
		}
	}
}

func TestHelp(t *testing.T) {
	var out, errs bytes.Buffer
	if code := emittersvc.Main(context.Background(), []string{"help"}, map[string]string{}, &out, &errs); code != 0 || !strings.Contains(out.String(), "outbox") {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	if code := emittersvc.Main(context.Background(), []string{"nope"}, map[string]string{}, &out, &errs); code != 2 {
		t.Fatalf("unknown command: exit %d", code)
	}
}

// EMITTER_DEAD_LETTER_AFTER is off or a duration of at least 1s; each
// tenant database is a valid connection string, named once (DATABASE_URL
// included), and a bad one is never quoted (it may hold a password).
func TestBadConfigurationDeadLetterAndTenants(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"EMITTER_DEAD_LETTER_AFTER": "soon"}, []string{"EMITTER_DEAD_LETTER_AFTER", "want off or a duration"}},
		{map[string]string{"EMITTER_DEAD_LETTER_AFTER": "500ms"}, []string{"EMITTER_DEAD_LETTER_AFTER: 500ms: want off or at least 1s"}},
		{map[string]string{"EMITTER_DEAD_LETTER_AFTER": "-1m"}, []string{"EMITTER_DEAD_LETTER_AFTER", "positive"}},
		{map[string]string{"EMITTER_TENANT_DATABASE_URLS": "postgres://u:secret@db:5432/a,postgres://u:secret@db:5432/x,postgres://db/a"},
			[]string{"EMITTER_TENANT_DATABASE_URLS: entry 2: the database db:5432/x again (as DATABASE_URL)", "entry 3: the database db:5432/a again (as entry 1)"}},
		{map[string]string{"EMITTER_TENANT_DATABASE_URLS": "postgres://u:secret@db:99999999/a"}, []string{"EMITTER_TENANT_DATABASE_URLS: entry 1: not a valid PostgreSQL connection string"}},
	} {
		env := map[string]string{"DATABASE_URL": "postgres://db:5432/x", "NATS_URL": "nats://localhost:4222"}
		for k, v := range c.env {
			env[k] = v
		}
		var out, errs bytes.Buffer
		if code := emittersvc.Main(context.Background(), nil, env, &out, &errs); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", c.env, code, errs.String())
		}
		for _, want := range c.want {
			if !strings.Contains(errs.String(), want) {
				t.Errorf("%v: stderr lacks %q:\n%s", c.env, want, errs.String())
			}
		}
		if strings.Contains(errs.String(), "secret") {
			t.Errorf("%v: stderr quotes a password:\n%s", c.env, errs.String())
		}
	}
	for ok, want := range map[string]time.Duration{"off": 0, "30m": 30 * time.Minute} {
		env := map[string]string{"DATABASE_URL": "postgres://db:5432/x", "NATS_URL": "nats://localhost:4222", "EMITTER_DEAD_LETTER_AFTER": ok,
			"EMITTER_TENANT_DATABASE_URLS": "postgres://db:5432/a,host=db2 dbname=b"}
		cfg, err := config.Load[emittersvc.Config](config.WithEnvironment(env))
		if err != nil || time.Duration(cfg.Emitter.DeadLetterAfter) != want || len(cfg.Emitter.TenantDatabaseURLs) != 2 {
			t.Errorf("EMITTER_DEAD_LETTER_AFTER=%s: %+v, %v", ok, cfg.Emitter, err)
		}
	}
}
