// Command demo runs the whole jetproj pipeline (feeder, projector, emitter)
// on embedded defaults and shows read models and derived events changing
// as example events are written; `demo write` only writes example events to
// an existing event store (the container stack's writer). See package demo.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/demo"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/process"
)

type env struct {
	DatabaseURL string `env:"DATABASE_URL" doc:"Event store; empty starts a throwaway PostgreSQL."`
	NATS        natsconn.Config
	Log         process.LogConfig
}

const usage = `Usage: demo [run] [flags]   the whole pipeline in this process, shown live
       demo write             append example events to DATABASE_URL until stopped
                              (DEMO_RATE events/s, DEMO_DURATION)

Flags of run:
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && (args[0] == "run" || args[0] == "write") {
		cmd, args = args[0], args[1:]
	}
	if cmd == "write" {
		cfg, err := config.Load[demo.WriterConfig](config.WithPrefixCheck("DEMO_", "DATABASE_", "LOG_"))
		if err != nil {
			fmt.Fprintln(stderr, "demo:", err)
			return 2
		}
		log := process.NewLogger(stderr, cfg.Log).With("service", "demo-writer")
		ctx, stop := process.SignalContext(context.Background(), log, os.Exit)
		defer stop()
		n, err := demo.Write(ctx, cfg, log)
		if err != nil {
			log.Error("demo writer failed", "error", err, "written", n)
			return 1
		}
		log.Info("demo writer stopped", "written", n)
		return 0
	}

	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	duration := fs.Duration("duration", 20*time.Second, "how long to write events (0: until Ctrl-C)")
	rate := fs.Int("rate", 20, "events per second")
	verbose := fs.Bool("v", false, "show the services' logs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load[env]()
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 2
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = process.NewLogger(stderr, cfg.Log)
	}
	ctx, stop := process.SignalContext(context.Background(), log, os.Exit)
	defer stop()
	res, err := demo.Run(ctx, demo.Options{DatabaseURL: cfg.DatabaseURL, NATS: cfg.NATS, Duration: *duration,
		Rate: *rate, Out: stdout, Log: log, Redraw: isTerminal(stdout) && !*verbose})
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	if res.Duplicates > 0 {
		fmt.Fprintf(stderr, "demo: %d duplicate derived events\n", res.Duplicates)
		return 1
	}
	return 0
}

// isTerminal reports whether w is a terminal, where frames are redrawn in
// place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
