package feedersvc_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/feedersvc"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// The pool's upper bound is checked with the rest, and every problem is
// listed at once.
func TestBadConfigurationListsEveryProblem(t *testing.T) {
	var out, errs bytes.Buffer
	code := feedersvc.Main(context.Background(), nil, map[string]string{
		"DATABASE_URL": "postgres://localhost/x", "NATS_URL": "nats://localhost:4222",
		"DATABASE_MAX_CONNS": "5000", "FEEDER_BATCH_SIZE": "1000000", "OPS_WEDGED_AFTER": "1ms",
	}, &out, &errs)
	if code != 2 {
		t.Fatalf("exit %d, want 2\n%s", code, errs.String())
	}
	for _, want := range []string{
		"DATABASE_MAX_CONNS: 5000, want at most 1000",
		"FEEDER_BATCH_SIZE: 1000000: want 1..100000",
		"OPS_WEDGED_AFTER: 1ms",
	} {
		if !strings.Contains(errs.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs.String())
		}
	}
}
