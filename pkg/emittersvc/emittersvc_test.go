package emittersvc_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/jetproj/jetproj/pkg/emittersvc"
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

// Settings pkg/emitter takes without bounds are checked by the service:
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
