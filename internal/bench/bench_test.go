package bench_test

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetproj/jetproj/internal/bench"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// TestFeeder runs the feeder benchmark's whole code path on a small scale
// against real servers, so that it cannot rot.
func TestFeeder(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	target := bench.Target{DatabaseURL: devtest.Postgres(t), NATSURL: devtest.NATS(t).URL(), NATSNoSync: true}
	var progress bytes.Buffer
	res, err := bench.Feeder(ctx, target, bench.FeederOptions{
		Events: 2000, Rounds: 2, Rate: 200, Duration: time.Second, Writers: 2, Progress: &progress,
	})
	if err != nil {
		t.Fatalf("Feeder: %v\nprogress:\n%s", err, progress.String())
	}
	if got, want := len(res.Raw), 2; got != want {
		t.Errorf("raw runs: got %d, want %d", got, want)
	}
	if got, want := len(res.Feeder), 2; got != want {
		t.Errorf("feeder runs: got %d, want %d", got, want)
	}
	for _, r := range append(res.Raw, res.Feeder...) {
		if r.Events != 2000 || r.Rate() <= 0 {
			t.Errorf("run: got %d events at %.0f ev/s, want 2000 at a positive rate", r.Events, r.Rate())
		}
	}
	if got, want := res.Live.Events, 200; got != want {
		t.Errorf("live events: got %d, want %d", got, want)
	}
	if l := res.Live; l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.Max || l.Max <= 0 {
		t.Errorf("live percentiles out of order: %+v", l)
	}
	sum := res.Summary()
	for _, want := range []string{"feeder backfill: 2000 events", "live latency @200 ev/s", "NoSync=true"} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary lacks %q:\n%s", want, sum)
		}
	}
	md := res.Markdown("go run ./internal/cmd/bench feeder -events 2000")
	if want := "| " + res.Date.Format(time.DateOnly) + " | `go run ./internal/cmd/bench feeder -events 2000` | 2000 |"; !strings.Contains(md, want) {
		t.Errorf("markdown lacks %q:\n%s", want, md)
	}
}

// TestStartServers starts and removes the servers the command uses.
func TestStartServers(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := bench.StartServers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	target := srv.Target()
	if !target.NATSNoSync {
		t.Error("NATSNoSync: got false, want true")
	}
	conn, err := pgx.Connect(ctx, target.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	natsDir := srv.NATS.Dir()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(natsDir); !os.IsNotExist(err) {
		t.Errorf("NATS store %s not removed: %v", natsDir, err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestPipelineThroughput runs the pipeline throughput benchmark's whole
// code path on a small scale — service binaries built from ./services, a
// nats-server process, both pipelines and every check — so that it cannot
// rot.
func TestPipelineThroughput(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := bench.StartServersWith(ctx, bench.ServerOptions{FastPostgres: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	target := srv.Target()
	if !target.NATSProcess || target.NATSNoSync {
		t.Errorf("target: got %+v, want a NATS process", target)
	}
	var progress bytes.Buffer
	res, err := bench.PipelineThroughput(ctx, target, srv.NATSProc.PID(), bench.ThroughputOptions{
		Events: 2000, Wallets: 200, Rounds: 1, Progress: &progress,
	})
	if err != nil {
		t.Fatalf("PipelineThroughput: %v\nprogress:\n%s", err, progress.String())
	}
	if got, want := len(res.Feeder), 1; got != want {
		t.Errorf("feeder runs: got %d, want %d", got, want)
	}
	for _, name := range bench.ThroughputProjections {
		runs := res.Pipelines[name]
		if len(runs) != 1 || runs[0].Events != 2000 || runs[0].Rate() <= 0 {
			t.Errorf("%s runs: got %+v, want one of 2000 events at a positive rate", name, runs)
		}
	}
	if runs := res.Pipelines["wallet_balance"]; len(runs) == 1 && runs[0].Derived < 200 {
		t.Errorf("wallet_balance derived events: got %d, want at least one per wallet (200)", runs[0].Derived)
	}
	sum := res.Summary()
	for _, want := range []string{"feeder alone", "wallet_balance ", "wallet_balance_kv", "nats-server process", "the machine allows ratio"} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary lacks %q:\n%s", want, sum)
		}
	}
	md := res.Markdown("go run ./internal/cmd/bench pipeline-throughput -events 2000")
	if want := "| " + res.Date.Format(time.DateOnly) + " | `go run ./internal/cmd/bench pipeline-throughput -events 2000` | 2000 |"; !strings.Contains(md, want) {
		t.Errorf("markdown lacks %q:\n%s", want, md)
	}
	dir := srv.NATSProc.Dir()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("nats-server directory %s not removed: %v", dir, err)
	}
}

// TestPipeline runs the latency benchmark's whole code path for a second
// against its headline servers (a nats-server process, PostgreSQL with
// fsync on), so that it cannot rot.
func TestPipeline(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := bench.StartServersWith(ctx, bench.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var progress bytes.Buffer
	res, err := bench.Pipeline(ctx, srv.Target(), bench.PipelineOptions{Rate: 100, Duration: time.Second, Writers: 2, Rounds: 1, Progress: &progress})
	if err != nil {
		t.Fatalf("Pipeline: %v\nprogress:\n%s", err, progress.String())
	}
	if len(res.Rounds) != 1 || res.Rounds[0].Derived.Events < 50 || res.Rounds[0].Derived.P99 <= 0 {
		t.Fatalf("rounds: got %+v, want one with about 100 events measured", res.Rounds)
	}
	sum := res.Summary()
	for _, want := range []string{"append → derived event", "NATS a separate nats-server process", "default settings (fsync on)"} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary lacks %q:\n%s", want, sum)
		}
	}
}

// TestCPUCeiling checks the arithmetic of the pipeline's CPU ceiling: 200
// events in 2 s whose processes used 3 CPU-seconds could not have taken
// less than 1.5 s on 2 cores, i.e. 133 ev/s, 0.67 × a feeder of 200 ev/s.
func TestCPUCeiling(t *testing.T) {
	r := bench.ThroughputResult{
		Feeder: []bench.Run{{Events: 200, Elapsed: time.Second}},
		Pipelines: map[string][]bench.PipelineRun{"p": {
			{Run: bench.Run{Events: 200, Elapsed: 4 * time.Second}, CPU: map[string]time.Duration{"feeder": time.Second}},
			{Run: bench.Run{Events: 200, Elapsed: 2 * time.Second}, CPU: map[string]time.Duration{"feeder": time.Second, "postgres": 2 * time.Second}},
		}},
	}
	cpu, busy, c := r.CPUCeiling("p", 2)
	if cpu != 3*time.Second || busy != 1.5 || c < 0.66 || c > 0.67 {
		t.Errorf("CPUCeiling: got %v, %.2f cores busy, ratio %.3f; want 3s, 1.50, 0.667 (the fastest run's)", cpu, busy, c)
	}
	// Feeder and PostgreSQL 3 CPU-s but no nats-server measured: no
	// server ceiling.
	if c := r.ServerCeiling("p", 2); c != 0 {
		t.Errorf("ServerCeiling without nats-server's CPU: got %.2f, want 0", c)
	}
	r.Pipelines["p"][1].CPU["nats-server"] = time.Second
	r.Pipelines["p"][1].CPU["projector"] = 10 * time.Second
	if c := r.ServerCeiling("p", 2); c < 0.49 || c > 0.51 {
		t.Errorf("ServerCeiling: got %.3f, want 0.5 (4 CPU-s of feeder, PostgreSQL and nats-server on 2 cores: 2 s, 100 ev/s)", c)
	}
	if _, _, c := r.CPUCeiling("none", 2); c != 0 {
		t.Errorf("CPUCeiling of a projection without runs: got %.2f, want 0", c)
	}
}

// TestPipelineCluster runs the cluster benchmark's whole code path at a
// tiny size — a single nats-server and a three-node cluster, throughput,
// latency, one SIGKILL of the node leading EVENTS and every check — so that
// it cannot rot. About 30 s, most of it the election after the kill.
func TestPipelineCluster(t *testing.T) {
	t.Parallel()
	devtest.Slow(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	srv, err := bench.StartServersWith(ctx, bench.ServerOptions{FastPostgres: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var progress bytes.Buffer
	res, err := bench.PipelineCluster(ctx, srv, bench.ClusterOptions{
		Throughput: bench.ThroughputOptions{Events: 1000, Wallets: 100, Projections: []string{"wallet_balance"}},
		Rate:       100, Duration: time.Second, Kills: 1, Progress: &progress,
	})
	if err != nil {
		t.Fatalf("PipelineCluster: %v\nprogress:\n%s", err, progress.String())
	}
	for _, r := range []bench.ThroughputResult{res.Single, res.Cluster} {
		if runs := r.Pipelines["wallet_balance"]; len(runs) != 1 || runs[0].Events != 1000 || runs[0].Rate() <= 0 {
			t.Errorf("wallet_balance runs: got %+v, want one of 1000 events at a positive rate", runs)
		}
	}
	if !res.Cluster.Target.NATSCluster || res.Cluster.Target.NATSReplicas != 3 || len(res.Cluster.Target.NATSPIDs) != 3 {
		t.Errorf("cluster target: got %+v, want three nodes, R3", res.Cluster.Target)
	}
	for _, p := range []bench.PipelineResult{res.SingleLatency, res.ClusterLatency} {
		if len(p.Rounds) != 1 || p.Rounds[0].Derived.Events != 100 || p.Rounds[0].Derived.P99 <= 0 {
			t.Errorf("latency rounds: got %+v, want one of 100 events", p.Rounds)
		}
	}
	if len(res.Resumes) != 1 || res.Resumes[0].Events <= 0 || res.Resumes[0].Derived <= 0 || res.Resumes[0].Node == "" {
		t.Errorf("resumes: got %+v, want one with both times", res.Resumes)
	}
	md := res.Markdown("go run ./internal/cmd/bench pipeline-cluster")
	for _, want := range []string{"| feeder alone |", "| cluster | 1 | 100 |", "| 1 | n"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if sum := res.Summary(); !strings.Contains(sum, "cluster of 3 nats-server processes") {
		t.Errorf("summary lacks the cluster:\n%s", sum)
	}
}
