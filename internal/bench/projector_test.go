package bench_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/bench"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
)

// childEnv makes the test binary the projector benchmark's memory child
// (the command re-executes itself with a hidden subcommand instead).
const childEnv = "JETPROJ_BENCH_TEST_CHILD"

// init runs before the testing flags are parsed, so the child's own flags
// reach ProjectorChild.
func init() {
	if os.Getenv(childEnv) != "projector" {
		return
	}
	if err := bench.ProjectorChild(context.Background(), os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestProjector runs the projector benchmark's whole code path, every part,
// on a small scale against a real embedded NATS server and a real child
// process, so that it cannot rot.
func TestProjector(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	target := bench.Target{NATSURL: devtest.NATS(t).URL(), NATSNoSync: true}
	var progress bytes.Buffer
	res, err := bench.Projector(ctx, target, bench.ProjectorOptions{
		Events: 600, Aggregates: 200, Rounds: 2, RebuildBatch: 100,
		ScaleAggregates: 10, ScaleEvents: 2, HandlerDelay: time.Millisecond, Replicas: []int{1, 2}, LeaseTTL: time.Second,
		Partitions: 2000, MemoryLimit: "64MiB", Child: []string{os.Args[0]}, ChildEnv: []string{childEnv + "=projector"},
		Progress: &progress,
	})
	if err != nil {
		t.Fatalf("Projector: %v\nprogress:\n%s", err, progress.String())
	}
	for name, runs := range map[string]int{
		"publish": len(res.Publish), "catch-up": len(res.CatchUp), "read": len(res.Read), "rebuild": len(res.Rebuild), "record write": len(res.RecordWrite),
	} {
		if runs != 2 {
			t.Errorf("%s runs: got %d, want 2", name, runs)
		}
	}
	for _, cr := range append(res.CatchUp, res.Rebuild...) {
		if cr.Events != 600 || cr.Rate() <= 0 || cr.Batches < 1 || cr.InBatches <= 0 {
			t.Errorf("catch-up run: got %+v, want 600 events at a positive rate in at least one batch", cr)
		}
	}
	for _, w := range res.RecordWrite {
		if w.Events != 200 || w.Rate() <= 0 {
			t.Errorf("raw record write: got %+v, want the 200 wallets' records at a positive rate", w)
		}
	}
	if c := res.RebuildCeiling(); c <= 0 || c >= 1 {
		t.Errorf("rebuild ceiling %.2f, want between 0 and 1", c)
	}
	if got, want := len(res.Scale), 4; got != want {
		t.Fatalf("replica runs: got %d, want %d (partitioned 1, 2; global 1, 2)", got, want)
	}
	for _, s := range res.Scale {
		if s.Events != 20 || s.Rate() <= 0 {
			t.Errorf("replica run %s ×%d: got %d events at %.0f ev/s, want 20 at a positive rate", s.Kind, s.Replicas, s.Events, s.Rate())
		}
	}
	if got, want := len(res.Memory), 2; got != want {
		t.Fatalf("memory runs: got %d, want %d", got, want)
	}
	for _, m := range res.Memory {
		if m.Partitions != 2000 || m.RSS == 0 || m.Peak < m.RSS || m.HeapInuse == 0 || m.LiveHeap == 0 {
			t.Errorf("memory run: got %+v, want 2000 partitions and non-zero figures", m)
		}
	}
	if got, want := res.Memory[1].Limit, "64MiB"; got != want {
		t.Errorf("second memory run's GOMEMLIMIT: got %q, want %q", got, want)
	}
	sum := res.Summary()
	for _, want := range []string{"projection catch-up (KV state): 600 events over 200 wallets", "rebuild (BatchSize 100)", "ceiling: raw write of the 200 records",
		"partitioned speed-up 2 vs 1 replicas", "global 2 vs 1 replicas", "memory, 2000 known partitions", "GOMEMLIMIT=64MiB", "NoSync=true"} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary lacks %q:\n%s", want, sum)
		}
	}
	md := res.Markdown("go run ./internal/cmd/bench projector -events 600")
	if want := "| " + res.Date.Format(time.DateOnly) + " | `go run ./internal/cmd/bench projector -events 600` | 600 |"; !strings.Contains(md, want) {
		t.Errorf("markdown lacks %q:\n%s", want, md)
	}
}
