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

func TestHelp(t *testing.T) {
	var out, errs bytes.Buffer
	if code := emittersvc.Main(context.Background(), []string{"help"}, map[string]string{}, &out, &errs); code != 0 || !strings.Contains(out.String(), "outbox") {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	if code := emittersvc.Main(context.Background(), []string{"nope"}, map[string]string{}, &out, &errs); code != 2 {
		t.Fatalf("unknown command: exit %d", code)
	}
}
