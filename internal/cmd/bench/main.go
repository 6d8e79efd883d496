// Command bench runs jetproj's benchmarks against throwaway servers that it
// starts on loopback and removes at exit: a PostgreSQL cluster and a NATS
// server — for feeder, pipeline, pipeline-throughput, emitter and waitfor a
// nats-server process and PostgreSQL with fsync on, projector a nats-server
// process (-embedded and -fsync-off give the older setting where offered),
// pipeline-cluster three nats-server processes, inline PostgreSQL with fsync
// on.
//
// Usage:
//
//	go run ./internal/cmd/bench <benchmark> [flags]
//
// Benchmarks:
//
//	feeder     feeder backfill against a raw relay, and live append latency
//	projector  projection catch-up, rebuild, replica scaling and memory
//	pipeline   append → derived event latency through feeder, projector and emitter
//	emitter    the emitter draining the outbox against a raw async publish
//	inline     appends/s with and without one inline projection
//	pipeline-throughput
//	           200k stored events through feeder, projector and emitter processes
//	           against the feeder alone (separate nats-server, PostgreSQL fsync on)
//	pipeline-cluster
//	           the pipeline on one nats-server and on a three-node cluster (R3) in one
//	           run: throughput, append → derived latency, resume after a leader SIGKILL
//
// Run "go run ./internal/cmd/bench <benchmark> -h" for a benchmark's flags.
// The first interrupt stops the benchmark and cleans up; a second one exits
// at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jetproj/jetproj/internal/bench"
)

// command is one benchmark.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{
	"feeder":    {"feeder backfill against a raw relay, and live append latency", runFeeder},
	"projector": {"projection catch-up, rebuild, replica scaling and memory", runProjector},
	"pipeline":  {"append → derived event latency through feeder, projector and emitter", runPipeline},
	"emitter":   {"the emitter draining the outbox against a raw async publish", bench.RunEmitterCommand},
	"pipeline-throughput": {"stored events through feeder, projector and emitter processes vs the feeder alone",
		runPipelineThroughput},
	"inline": {"appends/s with and without one inline projection", bench.RunInlineCommand},
	"pipeline-cluster": {"pipeline throughput, latency and leader-SIGKILL resume: one nats-server vs a 3-node R3 cluster",
		runPipelineCluster},
	"waitfor": {"append → projector.WaitFor returns, beside append → derived event, at 1k ev/s", bench.RunWaitForCommand},
}

var commandOrder = []string{"feeder", "projector", "pipeline", "pipeline-throughput", "pipeline-cluster", "emitter", "waitfor", "inline"}

// childCommand is the hidden command the projector benchmark starts itself
// with to measure a projector's memory in a process of its own.
const childCommand = "projector-child"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "help" {
		usage(stderr)
		return 2
	}
	if args[0] == childCommand {
		if err := bench.ProjectorChild(context.Background(), args[1:], os.Stdin, stdout); err != nil {
			fmt.Fprintf(stderr, "bench %s: %v\n", childCommand, err)
			return 1
		}
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "bench: unknown benchmark %q\n", args[0])
		usage(stderr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second signal now ends the process at once
	}()
	err := cmd.run(ctx, args[1:], stdout, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 2
	case err != nil && ctx.Err() != nil:
		fmt.Fprintf(stderr, "bench %s: interrupted; servers stopped and removed\n", args[0])
		return 130
	case err != nil:
		fmt.Fprintf(stderr, "bench %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: go run ./internal/cmd/bench <benchmark> [flags]")
	fmt.Fprintln(w, "benchmarks:")
	for _, name := range commandOrder {
		fmt.Fprintf(w, "  %-20s %s\n", name, commands[name].summary)
	}
}

// common holds what every benchmark's command line has besides its own
// flags.
type common struct {
	name     string
	args     []string
	markdown *bool
	verbose  *bool
}

// commonFlags adds -markdown and -v to fs; logs names whose info logs -v
// shows.
func commonFlags(fs *flag.FlagSet, args []string, logs string) *common {
	return &common{
		name:     fs.Name(),
		args:     args,
		markdown: fs.Bool("markdown", false, "also print markdown tables for docs/benchmarks.md"),
		verbose:  fs.Bool("v", false, "show the "+logs+"' info logs"),
	}
}

// parse parses the command line; positional arguments are refused.
func (c *common) parse(fs *flag.FlagSet) error {
	if err := fs.Parse(c.args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return nil
}

// logger logs warnings, and info with -v.
func (c *common) logger(stderr io.Writer) *slog.Logger {
	level := slog.LevelWarn
	if *c.verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

// report is a benchmark's result.
type report interface {
	Summary() string
	Markdown(command string) string
}

// serve starts the servers (saying so with banner), runs the benchmark
// against them, removes them and prints the report, with markdown tables
// when asked.
func (c *common) serve(ctx context.Context, stdout, stderr io.Writer, banner string,
	start func(context.Context) (*bench.Servers, error), run func(bench.Target) (report, error)) error {
	fmt.Fprintln(stdout, banner)
	srv, err := start(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err := srv.Close(); err != nil {
			fmt.Fprintln(stderr, err)
		}
	}()
	res, err := run(srv.Target())
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, res.Summary())
	if *c.markdown {
		fmt.Fprintln(stdout)
		fmt.Fprint(stdout, res.Markdown(commandLine(c.name, c.args)))
	}
	return nil
}

// profileDir creates the directory for CPU profiles, if one is asked for.
func profileDir(dir string) error {
	if dir == "" {
		return nil
	}
	return os.MkdirAll(dir, 0o755)
}

func runFeeder(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("feeder", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bench.FeederOptions
	fs.IntVar(&o.Events, "events", 500000, "events to load into the store")
	fs.IntVar(&o.Aggregates, "aggregates", 0, "wallets the events are spread over (0: events/10, at most 50000)")
	fs.IntVar(&o.Rounds, "rounds", 3, "rounds of raw relay then feeder")
	fs.IntVar(&o.Rate, "rate", 2000, "live append rate in events/s")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "duration of the live appends")
	fs.IntVar(&o.Writers, "writers", 4, "concurrent live writers")
	fs.StringVar(&o.CPUProfileDir, "cpuprofile", "", "directory for a CPU profile of each run (raw-N.pprof, feeder-N.pprof, live.pprof)")
	var so bench.ServerOptions
	fs.BoolVar(&so.EmbeddedNATS, "embedded", false, "run NATS embedded in the benchmark's process (NoSync) instead of a nats-server process")
	fs.BoolVar(&so.FastPostgres, "fsync-off", false, "run PostgreSQL with fsync off instead of its default settings")
	c := commonFlags(fs, args, "feeders")
	if err := c.parse(fs); err != nil {
		return err
	}
	if err := profileDir(o.CPUProfileDir); err != nil {
		return err
	}
	o.Logger, o.Progress = c.logger(stderr), stdout
	return c.serve(ctx, stdout, stderr, serversBanner(so),
		func(ctx context.Context) (*bench.Servers, error) { return bench.StartServersWith(ctx, so) },
		func(t bench.Target) (report, error) { return bench.Feeder(ctx, t, o) })
}

func runProjector(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("projector", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bench.ProjectorOptions
	fs.IntVar(&o.Events, "events", 300000, "events published for the catch-up and rebuild")
	fs.IntVar(&o.Aggregates, "aggregates", 0, "wallets the events are spread over (0: events/3, at most 100000)")
	fs.IntVar(&o.Rounds, "rounds", 3, "rounds of raw limit then projector")
	fs.IntVar(&o.RebuildBatch, "rebuild-batch", 5000, "BatchSize of the rebuilt projection")
	fs.BoolVar(&o.NoWriteBehind, "no-write-behind", false, "catch-up and rebuild write every batch's records (StateWriteInterval(0)), for comparison")
	fs.IntVar(&o.ScaleAggregates, "scale-aggregates", 2000, "wallets of the replica part")
	fs.IntVar(&o.ScaleEvents, "scale-events", 3, "events per wallet in the replica part")
	fs.DurationVar(&o.HandlerDelay, "handler-delay", 2*time.Millisecond, "time the replica part's handler waits per event")
	replicas := fs.String("replicas", "1,2,4", "replica counts of the replica part")
	fs.DurationVar(&o.LeaseTTL, "lease-ttl", 2*time.Second, "lease TTL of the replica part's projectors")
	fs.IntVar(&o.Partitions, "partitions", 1000000, "known partitions of the memory part")
	fs.StringVar(&o.MemoryLimit, "memlimit", "250MiB", "GOMEMLIMIT of the memory part's second child run (off: no second run)")
	parts := fs.String("parts", strings.Join(bench.ProjectorParts, ","), "parts to run")
	embedded := fs.Bool("embedded", false, "run NATS embedded in the benchmark's process (NoSync) instead of a nats-server process")
	fs.StringVar(&o.CPUProfileDir, "cpuprofile", "", "directory for a CPU profile of each run (publish-N, catchup-N, read-N, rebuild-N, replicas-KIND-N .pprof) and heap profiles of the memory children")
	c := commonFlags(fs, args, "projectors")
	if err := c.parse(fs); err != nil {
		return err
	}
	for _, s := range strings.Split(*replicas, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("-replicas %q: %w", *replicas, err)
		}
		o.Replicas = append(o.Replicas, n)
	}
	o.Parts = strings.Split(*parts, ",")
	if err := profileDir(o.CPUProfileDir); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o.Child = []string{self, childCommand}
	o.Logger, o.Progress = c.logger(stderr), stdout
	start, say := bench.StartNATSProcessServer, "starting a nats-server process (built from go.mod's module, default settings, same server for every step) on loopback"
	if *embedded {
		start, say = bench.StartNATSServer, "starting embedded NATS (NoSync: true, same server for every step) on loopback"
	}
	return c.serve(ctx, stdout, stderr, say, start, func(t bench.Target) (report, error) { return bench.Projector(ctx, t, o) })
}

// commandLine is the command that reproduces this run.
func commandLine(name string, args []string) string {
	return strings.Join(append([]string{"go run ./internal/cmd/bench " + name}, args...), " ")
}

func runPipeline(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pipeline", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bench.PipelineOptions
	fs.IntVar(&o.Rate, "rate", 1000, "append rate in events/s")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "duration of the appends of each round")
	fs.IntVar(&o.Writers, "writers", 4, "concurrent writers, each to its own 64 wallets")
	fs.IntVar(&o.Rounds, "rounds", 3, "measured rounds")
	fs.BoolVar(&o.ReadModelCluster, "readmodel-cluster", false, "keep the read model and outbox in a PostgreSQL cluster of their own")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	var so bench.ServerOptions
	fs.BoolVar(&so.EmbeddedNATS, "embedded", false, "run NATS embedded in the benchmark's process (NoSync) instead of a nats-server process")
	fs.BoolVar(&so.FastPostgres, "fsync-off", false, "run PostgreSQL with fsync off instead of its default settings")
	c := commonFlags(fs, args, "services")
	if err := c.parse(fs); err != nil {
		return err
	}
	o.Logger, o.Progress = c.logger(stderr), stdout
	return c.serve(ctx, stdout, stderr, serversBanner(so),
		func(ctx context.Context) (*bench.Servers, error) { return bench.StartServersWith(ctx, so) },
		func(t bench.Target) (report, error) {
			if *cpuprofile != "" {
				f, err := os.Create(*cpuprofile)
				if err != nil {
					return nil, err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return nil, err
				}
				defer pprof.StopCPUProfile()
			}
			return bench.Pipeline(ctx, t, o)
		})
}

func runPipelineThroughput(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pipeline-throughput", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bench.ThroughputOptions
	var so bench.ServerOptions
	fs.IntVar(&o.Events, "events", 200000, "events loaded into the store beforehand")
	fs.IntVar(&o.Wallets, "wallets", 0, "wallets the events are spread over (0: events/10)")
	fs.IntVar(&o.Rounds, "rounds", 3, "rounds of feeder alone then each pipeline")
	projections := fs.String("projections", strings.Join(bench.ThroughputProjections, ","), "projections run as pipelines, each in its own runs")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "longest run")
	fs.BoolVar(&so.EmbeddedNATS, "embedded", false, "run NATS embedded in the benchmark's process (NoSync) instead of a nats-server process")
	fs.BoolVar(&so.FastPostgres, "fsync-off", false, "run PostgreSQL with fsync off instead of its default settings")
	fs.BoolVar(&o.PGStat, "pgstat", false, "print the statements PostgreSQL spent most time on after each pipeline run (loads pg_stat_statements)")
	c := commonFlags(fs, args, "benchmark")
	if err := c.parse(fs); err != nil {
		return err
	}
	so.StatStatements = o.PGStat
	o.Projections = strings.Split(*projections, ",")
	o.Logger, o.Progress = c.logger(stderr), stdout
	var natsPID int
	return c.serve(ctx, stdout, stderr, serversBanner(so),
		func(ctx context.Context) (*bench.Servers, error) {
			s, err := bench.StartServersWith(ctx, so)
			if err == nil && s.NATSProc != nil {
				natsPID = s.NATSProc.PID()
			}
			return s, err
		},
		func(t bench.Target) (report, error) {
			res, err := bench.PipelineThroughput(ctx, t, natsPID, o)
			return res, err
		})
}

// serversBanner says which servers StartServersWith starts.
func serversBanner(so bench.ServerOptions) string {
	n := "a nats-server process (built from go.mod's module, default settings)"
	if so.EmbeddedNATS {
		n = "embedded NATS (NoSync: true)"
	}
	pg := "throwaway PostgreSQL (default settings, fsync on)"
	if so.FastPostgres {
		pg = "throwaway PostgreSQL (fsync off)"
	}
	return "starting " + pg + " and " + n + " on loopback"
}

func runPipelineCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pipeline-cluster", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bench.ClusterOptions
	var so bench.ServerOptions
	fs.IntVar(&o.Throughput.Events, "events", 50000, "events loaded into the store beforehand, for each server's throughput runs")
	fs.IntVar(&o.Throughput.Wallets, "wallets", 0, "wallets the events are spread over (0: events/10)")
	fs.IntVar(&o.Throughput.Rounds, "rounds", 1, "throughput rounds of feeder alone then each pipeline, per server")
	projections := fs.String("projections", strings.Join(bench.ThroughputProjections, ","), "projections run as pipelines in the throughput runs")
	fs.DurationVar(&o.Throughput.Timeout, "timeout", 10*time.Minute, "longest throughput run")
	fs.IntVar(&o.Rate, "rate", 200, "append rate in events/s of the latency rounds and during the leader kills")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "duration of a latency round")
	fs.IntVar(&o.Writers, "writers", 4, "concurrent writers, each to its own 64 wallets")
	fs.IntVar(&o.Rounds, "latency-rounds", 1, "latency rounds per server")
	fs.IntVar(&o.Kills, "kills", 2, "SIGKILLs of the node leading EVENTS, one after the other")
	fs.BoolVar(&so.FastPostgres, "fsync-off", false, "run PostgreSQL with fsync off instead of its default settings")
	c := commonFlags(fs, args, "benchmark")
	if err := c.parse(fs); err != nil {
		return err
	}
	o.Throughput.Projections = strings.Split(*projections, ",")
	o.Logger, o.Progress = c.logger(stderr), stdout
	var srv *bench.Servers
	return c.serve(ctx, stdout, stderr, serversBanner(so)+"; then a three-node nats-server cluster",
		func(ctx context.Context) (*bench.Servers, error) {
			s, err := bench.StartServersWith(ctx, so)
			srv = s
			return s, err
		},
		func(bench.Target) (report, error) { return bench.PipelineCluster(ctx, srv, o) })
}
