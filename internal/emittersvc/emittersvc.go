// Package emittersvc is the emitter service: configuration, command line
// and wiring. services/emitter/main.go only calls Main.
package emittersvc

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"time"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/pgpool"
	"github.com/jetproj/jetproj/internal/process"
	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/internal/tracing"
	"github.com/jetproj/jetproj/pkg/contract"
)

// Config is the emitter service's configuration.
type Config struct {
	DB      pgpool.Config
	NATS    natsconn.Config
	Emitter emitter.Config
	Log     process.LogConfig
	Ops     opsserver.Config
	Page    statuspage.Config
}

// Bounds of the settings that internal/emitter accepts without an upper limit.
const (
	// maxBatchSize bounds EMITTER_BATCH_SIZE: a round holds its rows in
	// memory and keeps four times as many publishes in flight.
	maxBatchSize = 10000
	// maxPoolConns bounds DATABASE_MAX_CONNS: PostgreSQL's own default
	// allows 100 connections for every client together.
	maxPoolConns = 1000
)

// nameRE is what EMITTER_NAME may be: it is the key of the emitter's lease.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Validate lists the problems that the nested configurations leave out.
func (c Config) Validate() []string {
	var p []string
	if c.Emitter.BatchSize > maxBatchSize {
		p = append(p, fmt.Sprintf("EMITTER_BATCH_SIZE: %d: want at most %d", c.Emitter.BatchSize, maxBatchSize))
	}
	switch c.Emitter.Replicas {
	case 1, 3, 5:
	default:
		p = append(p, fmt.Sprintf("EMITTER_STREAM_REPLICAS: %d: want 1, 3 or 5", c.Emitter.Replicas))
	}
	// An empty name is internal/emitter's own problem.
	if c.Emitter.Name != "" && !nameRE.MatchString(c.Emitter.Name) {
		p = append(p, fmt.Sprintf("EMITTER_NAME: %q: want 1-64 characters of [A-Za-z0-9_-] (it is the key of the emitter's lease)", c.Emitter.Name))
	}
	// A database named twice would be relayed twice: its rows published
	// twice. Told apart by host, port and database name.
	seen := map[string]int{}
	if where := dbWhere(c.DB.URL); where != "" {
		seen[where] = 0
	}
	for i, u := range c.Emitter.TenantDatabaseURLs {
		where := dbWhere(u)
		if where == "" {
			continue // internal/emitter reports it
		}
		if j, ok := seen[where]; ok {
			other := "DATABASE_URL"
			if j > 0 {
				other = fmt.Sprintf("entry %d", j)
			}
			p = append(p, fmt.Sprintf("EMITTER_TENANT_DATABASE_URLS: entry %d: the database %s again (as %s): each database once", i+1, where, other))
			continue
		}
		seen[where] = i + 1
	}
	if c.DB.MaxConns > maxPoolConns {
		p = append(p, fmt.Sprintf("DATABASE_MAX_CONNS: %d, want at most %d", c.DB.MaxConns, maxPoolConns))
	}
	return p
}

// Prefixes are the variable prefixes checked for typos.
var Prefixes = []string{"EMITTER_", "NATS_", "LOG_", "DATABASE_", "OPS_"}

const usage = `Usage: emitter [run|healthcheck|dead-letters|requeue <subject>|help]

Relays the projections' derived events from jetproj.outbox to JetStream
(project.<name>.> and linked streams), exactly once. Configuration comes from
the environment; see README.md.

  dead-letters        lists the subjects whose derived events are in the
                      dead letter (jetproj.outbox_dead) of each database
  requeue <subject>   moves a subject's dead-lettered events back to the
                      outbox, in their order: the running emitter relays them
`

// Main runs the command in args and returns the exit code.
func Main(ctx context.Context, args []string, environ map[string]string, stdout, stderr io.Writer) int {
	command := "run"
	if len(args) > 0 {
		command = args[0]
		switch args[0] {
		case "help", "-h", "--help":
			fmt.Fprint(stdout, usage)
			return 0
		case "healthcheck":
			return opsserver.HealthcheckCommand(ctx, environ, stderr)
		case "requeue":
			if len(args) != 2 || args[1] == "" {
				fmt.Fprintf(stderr, "emitter: requeue takes one subject\n\n%s", usage)
				return 2
			}
		case "dead-letters":
			if len(args) != 1 {
				fmt.Fprintf(stderr, "emitter: dead-letters takes no argument\n\n%s", usage)
				return 2
			}
		case "run":
		default:
			fmt.Fprintf(stderr, "emitter: unknown command %q\n\n%s", args[0], usage)
			return 2
		}
	}
	opts := []config.Option{config.WithPrefixCheck(Prefixes...)}
	if environ != nil {
		opts = append(opts, config.WithEnvironment(environ))
	}
	cfg, err := config.Load[Config](opts...)
	if err != nil {
		fmt.Fprintf(stderr, "emitter: %v\n", err)
		return 2
	}
	if command == "requeue" || command == "dead-letters" {
		if err := deadLetterCommand(ctx, cfg, args, stdout); err != nil {
			fmt.Fprintf(stderr, "emitter: %v\n", err)
			return 1
		}
		return 0
	}
	log := process.NewLogger(stderr, cfg.Log).With("service", "emitter")
	ctx, stop := process.SignalContext(ctx, log, os.Exit)
	defer stop()
	if err := run(ctx, cfg, log); err != nil && ctx.Err() != nil {
		// Stopped while starting: a stop, not a failure.
		log.Info("emitter stopped while starting", "error", err)
	} else if err != nil {
		log.Error("emitter failed", "error", err)
		return 1
	}
	return 0
}

func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	cfg.Emitter = cfg.Emitter.Defaults() // EMITTER_INSTANCE: host name and process id
	dbs, err := openDatabases(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeDatabases(dbs)
	// Passing JetStream trouble (a node restarting, a leader moving) is
	// waited for everywhere below, logged once per episode, and fails
	// readiness while it lasts.
	retry := jsretry.New(log)
	ctx = jsretry.NewContext(ctx, retry)
	conn, err := natsconn.Connect(ctx, cfg.NATS, log)
	if err != nil {
		return err
	}
	defer conn.Close()
	// A connection the server closed for good ends the emitter.
	ctx, stopGuard := conn.Guard(ctx)
	defer stopGuard()
	conn.WarnSingleReplica(cfg.Emitter.Replicas, "EMITTER_STREAM_REPLICAS", contract.KVStream(contract.EmitterLeaseBucket), "linked streams")
	shutdownTracing, err := tracing.Setup(ctx, "jetproj-emitter", log)
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	defer func() { _ = shutdownTracing(context.Background()) }()
	reg := opsserver.NewRegistry()
	e, err := emitter.NewDatabases(cfg.Emitter, dbs, conn.NC, log, reg)
	if err != nil {
		return err
	}
	ops := opsserver.New(cfg.Ops, reg, log)
	ops.Ready("nats", opsserver.Public(natsconn.Connected(conn.NC)))
	ops.Ready("jetstream", opsserver.Public(retry.Check))
	ops.Live("nats", opsserver.Public(conn.Alive))
	// PostgreSQL errors name hosts and users: /readyz says "failing",
	// the log has the error.
	ops.Ready("postgres", func(ctx context.Context) error {
		for _, d := range dbs {
			if err := d.Pool.Ping(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	ops.Wedged(func() (string, time.Time) { return "relay round", e.BusySince() })
	page, err := statuspage.New(statuspage.Options{Config: cfg.Page, JS: conn.JS, Service: "emitter", Instance: cfg.Emitter.Instance,
		Replicas: cfg.Emitter.Replicas, Logger: log})
	if err != nil {
		return err
	}
	page.Collect(PageCollector(cfg.Emitter, dbs, e.Stalled, reg))
	ops.Mount("/", page.Handler())
	log.Info("emitter starting", "instance", cfg.Emitter.Instance)
	err = ops.Serve(ctx, page.Beside(e.Run))
	if lost := conn.Err(); lost != nil {
		return lost
	}
	return err
}
