package projectorsvc_test

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

// tables is a writer that counts the status tables written to it and
// cancels once it has seen want of them.
type tables struct {
	mu     sync.Mutex
	b      bytes.Buffer
	want   int
	cancel context.CancelFunc
}

func (w *tables) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	if strings.Count(w.b.String(), "NAME  ") >= w.want {
		w.cancel()
	}
	return len(p), nil
}

// status --watch prints the table again and again until stopped; not on a
// terminal, plainly, one after the other with a time stamp, and no escape
// sequences. It ends with 0 on a stop (Ctrl-C).
func TestStatusWatch(t *testing.T) {
	t.Parallel()
	defer projectorsvc.SetWatchInterval(50 * time.Millisecond)()
	b := setup(t)
	b.env["PROJECTIONS"] = "wallet_balance"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := &tables{want: 3, cancel: cancel}
	var errs bytes.Buffer
	code := projectorsvc.Main(ctx, []string{"status", "--watch"}, b.env, out, &errs, examples.All)
	out.mu.Lock()
	got := out.b.String()
	out.mu.Unlock()
	if code != 0 {
		t.Fatalf("status --watch: exit %d\n%s", code, errs.String())
	}
	if n := strings.Count(got, "NAME  "); n < 3 {
		t.Fatalf("status --watch printed %d tables before its deadline:\n%s", n, got)
	}
	if strings.Contains(got, "\033[") {
		t.Fatalf("status --watch wrote escape sequences to a non-terminal:\n%q", got)
	}
	if !strings.Contains(got, "wallet_balance") || !strings.Contains(got, "(Ctrl-C to stop)") {
		t.Fatalf("status --watch:\n%s", got)
	}
	if r := call(context.Background(), b.env, examples.All, "status", "--watch", "--json"); r.code != 2 {
		t.Fatalf("status --watch --json: %v, want exit 2", r)
	}
}
