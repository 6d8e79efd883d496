// Command demo runs the jetproj pipeline on embedded defaults and shows
// events flowing. See package demo.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jetproj/jetproj/pkg/config"
	"github.com/jetproj/jetproj/pkg/demo"
	"github.com/jetproj/jetproj/pkg/lifecycle"
	"github.com/jetproj/jetproj/pkg/logging"
	"github.com/jetproj/jetproj/pkg/natsconn"
)

type env struct {
	DatabaseURL string `env:"DATABASE_URL" doc:"Event store; empty starts a throwaway PostgreSQL."`
	NATS        natsconn.Config
	Log         logging.Config
}

func main() {
	duration := flag.Duration("duration", 15*time.Second, "how long to write events (0: until Ctrl-C)")
	rate := flag.Int("rate", 20, "business actions per second")
	verbose := flag.Bool("v", false, "show the services' logs")
	flag.Parse()
	cfg, err := config.Load[env]()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = logging.New(os.Stderr, cfg.Log)
	}
	ctx, stop := lifecycle.SignalContext(context.Background(), log, os.Exit)
	defer stop()
	res, err := demo.Run(ctx, demo.Options{DatabaseURL: cfg.DatabaseURL, NATS: cfg.NATS, Duration: *duration,
		Rate: *rate, Out: os.Stdout, Log: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	if res.Duplicates > 0 {
		fmt.Fprintf(os.Stderr, "demo: %d duplicates\n", res.Duplicates)
		os.Exit(1)
	}
}
