// Package feedersvc is the feeder service: its configuration, its command
// line (run, migrate, status) and its wiring of PostgreSQL, NATS and the
// feeder. services/feeder/main.go only calls Main.
package feedersvc

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/pgpool"
	"github.com/jetproj/jetproj/internal/process"
	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/internal/tracing"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

// Config is the feeder service's configuration, read from the environment.
type Config struct {
	DB     pgpool.Config
	NATS   natsconn.Config
	Feeder feeder.Config
	Log    process.LogConfig
	Ops    opsserver.Config
	Page   statuspage.Config
}

// maxPoolConns bounds DATABASE_MAX_CONNS: PostgreSQL's own default allows
// 100 connections for every client together.
const maxPoolConns = 1000

// Validate lists the problems that the nested configurations leave out.
func (c Config) Validate() []string {
	if c.DB.MaxConns > maxPoolConns {
		return []string{fmt.Sprintf("DATABASE_MAX_CONNS: %d, want at most %d", c.DB.MaxConns, maxPoolConns)}
	}
	return nil
}

// Prefixes are the variable prefixes checked for typos.
var Prefixes = []string{"FEEDER_", "NATS_", "LOG_", "DATABASE_", "OPS_"}

const usage = `Usage: feeder [command]

Commands:
  run       publish the event store to JetStream (default)
  migrate   apply the event store migrations and exit
  status    print the feeder's saved status and checkpoint (--json)
  healthcheck  exit 0 when the local feeder's /readyz answers 200 (container health check)
  help      print this help

Configuration comes from the environment; see README.md.
`

// Main runs the command in args and returns the exit code.
func Main(ctx context.Context, args []string, environ map[string]string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "healthcheck":
		return opsserver.HealthcheckCommand(ctx, environ, stderr)
	case "run", "migrate", "status":
	default:
		fmt.Fprintf(stderr, "feeder: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	var opts []config.Option
	if environ != nil {
		opts = append(opts, config.WithEnvironment(environ))
	}
	if cmd == "status" {
		// DATABASE_URL may be set (the same environment as the service) but
		// is not used.
		opts = append(opts, config.WithPrefixCheck("FEEDER_", "NATS_", "LOG_"))
		// status reads the feeder's state from NATS: no database needed.
		fs := flag.NewFlagSet("status", flag.ContinueOnError)
		fs.SetOutput(stderr)
		asJSON := fs.Bool("json", false, "print JSON")
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		cfg, err := config.Load[StatusConfig](opts...)
		if err != nil {
			fmt.Fprintf(stderr, "feeder: %v\n", err)
			return 2
		}
		log := process.NewLogger(stderr, cfg.Log).With("service", "feeder")
		if err := status(ctx, cfg, stdout, *asJSON); err != nil {
			log.Error("feeder status failed", "error", err)
			return 1
		}
		return 0
	}
	cfg, err := config.Load[Config](append(opts, config.WithPrefixCheck(Prefixes...))...)
	if err != nil {
		fmt.Fprintf(stderr, "feeder: %v\n", err)
		return 2
	}
	log := process.NewLogger(stderr, cfg.Log).With("service", "feeder")
	ctx, stop := process.SignalContext(ctx, log, os.Exit)
	defer stop()

	if cmd == "migrate" {
		err = migrate(ctx, cfg, log)
	} else if err = run(ctx, cfg, log); err != nil && ctx.Err() != nil {
		// Stopped while starting: a stop, not a failure.
		log.Info("feeder stopped while starting", "error", err)
		err = nil
	}
	if err != nil {
		log.Error("feeder failed", "error", err)
		return 1
	}
	return 0
}

func migrate(ctx context.Context, cfg Config, log *slog.Logger) error {
	pool, err := pgpool.Open(ctx, cfg.DB)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := eventstore.Migrate(ctx, pool)
	if err != nil {
		return err
	}
	log.Info("event store migrated", "applied", applied)
	return nil
}

func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	pool, err := pgpool.Open(ctx, cfg.DB)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := eventstore.Migrate(ctx, pool)
	if err != nil {
		return err
	}
	if len(applied) > 0 {
		log.Info("event store migrated", "applied", applied)
	}
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
	// A connection the server closed for good ends the feeder.
	ctx, stopGuard := conn.Guard(ctx)
	defer stopGuard()
	conn.WarnSingleReplica(cfg.Feeder.Defaults().StreamReplicas, "FEEDER_STREAM_REPLICAS",
		cfg.Feeder.Defaults().Stream, contract.KVStream(cfg.Feeder.Defaults().LeaseBucket), contract.KVStream(cfg.Feeder.Defaults().StateBucket))
	if conn.Embedded != nil {
		log.Info("embedded NATS server started", "url", conn.Embedded.URL(), "dir", conn.Embedded.Dir())
	}
	shutdownTracing, err := tracing.Setup(ctx, "jetproj-feeder", log)
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	defer func() { _ = shutdownTracing(context.Background()) }()
	reg := opsserver.NewRegistry()
	f, err := feeder.New(cfg.Feeder, feeder.Deps{Pool: pool, NC: conn.NC, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	behind := Lag(f, pool)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "jetproj_feeder_lag",
		Help: "Committed events in the store this feeder has not published yet (0 on a standby).", ConstLabels: prometheus.Labels{"feeder": f.Config().Name}},
		func() float64 {
			st := f.Status()
			if st.State == feeder.StateStandby || st.State == feeder.StateStarting {
				return 0
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			n, err := behind(ctx)
			if err != nil {
				return 0
			}
			return float64(n)
		}))
	ops := opsserver.New(cfg.Ops, reg, log)
	ops.Ready("nats", opsserver.Public(natsconn.Connected(conn.NC)))
	ops.Ready("jetstream", opsserver.Public(retry.Check))
	ops.Live("nats", opsserver.Public(conn.Alive))
	// PostgreSQL errors name hosts and users: /readyz says "failing",
	// the log has the error.
	ops.Ready("postgres", pool.Ping)
	// A standby is ready too (it takes over when the active one stops);
	// /readyz shows which it is.
	ops.Report("lease", func() string {
		if st := f.Status(); st.State != feeder.StateStandby && st.State != feeder.StateStarting {
			return "held (" + st.State + ")"
		}
		return "standby"
	})
	ops.Wedged(func() (string, time.Time) { return "feeding", f.BusySince() })
	page, err := statuspage.New(statuspage.Options{Config: cfg.Page, JS: conn.JS, Service: "feeder", Instance: f.Config().Instance,
		Replicas: f.Config().StreamReplicas, Logger: log})
	if err != nil {
		return err
	}
	page.Collect(PageCollector(f, pool, behind, conn.JS, cfg.Feeder, reg))
	ops.Mount("/", page.Handler())
	log.Info("feeder starting", "name", f.Config().Name, "stream", f.Config().Stream, "instance", f.Config().Instance)
	err = ops.Serve(ctx, page.Beside(f.Run))
	if lost := conn.Err(); lost != nil {
		return lost
	}
	return err
}

// StatusConfig is what `feeder status` needs: no database.
type StatusConfig struct {
	NATS   natsconn.Config
	Feeder feeder.Config
	Log    process.LogConfig
}

func status(ctx context.Context, cfg StatusConfig, out io.Writer, asJSON bool) error {
	if cfg.NATS.Embedded() {
		return errors.New("status needs NATS_URL: the feeder's state lives in the NATS server it runs against")
	}
	conn, err := natsconn.Connect(ctx, cfg.NATS, nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	rep, err := feeder.ReadReport(ctx, conn.JS, cfg.Feeder)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FEEDER\tSTREAM\tSTATE\tPOSITION\tCURSOR\tSTREAM SEQ\tUPDATED\tERROR")
	name, stream := cfg.Feeder.Defaults().Name, cfg.Feeder.Defaults().Stream
	st, pos, cur, seq, upd, msg := "unknown", int64(0), "-", uint64(0), "-", ""
	if rep.Checkpoint != nil {
		pos, cur, seq, upd = rep.Checkpoint.Cursor.Position, rep.Checkpoint.Cursor.String(), rep.Checkpoint.StreamSeq, rep.Checkpoint.Updated.Format(time.RFC3339)
	}
	if rep.Status != nil {
		st, msg = rep.Status.State, rep.Status.Error
	}
	fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n", name, stream, st, pos, cur, seq, upd, msg)
	return tw.Flush()
}
