// Command bench runs jetproj's benchmarks against throwaway servers that it
// starts on loopback and removes at exit: a non-durable PostgreSQL cluster
// and an embedded NATS server.
//
// Usage:
//
//	go run ./internal/cmd/bench <benchmark> [flags]
//
// Benchmarks:
//
//	feeder   feeder backfill against a raw relay, and live append latency
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
	"feeder": {"feeder backfill against a raw relay, and live append latency", runFeeder},
}

var commandOrder = []string{"feeder"}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "help" {
		usage(stderr)
		return 2
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
		fmt.Fprintf(w, "  %-8s %s\n", name, commands[name].summary)
	}
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
	markdown := fs.Bool("markdown", false, "also print a markdown table for docs/benchmarks.md")
	verbose := fs.Bool("v", false, "show the feeders' info logs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if o.CPUProfileDir != "" {
		if err := os.MkdirAll(o.CPUProfileDir, 0o755); err != nil {
			return err
		}
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	o.Progress = stdout

	fmt.Fprintln(stdout, "starting throwaway PostgreSQL (fsync off) and embedded NATS (NoSync: true, same server for every step) on loopback")
	srv, err := bench.StartServers(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err := srv.Close(); err != nil {
			fmt.Fprintln(stderr, err)
		}
	}()
	res, err := bench.Feeder(ctx, srv.Target(), o)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, res.Summary())
	if *markdown {
		fmt.Fprintln(stdout)
		fmt.Fprint(stdout, res.Markdown(commandLine(args)))
	}
	return nil
}

// commandLine is the command that reproduces this run.
func commandLine(args []string) string {
	return strings.Join(append([]string{"go run ./internal/cmd/bench feeder"}, args...), " ")
}
