// Package projectorsvc is the projector service: its configuration, its
// command line (run, status, init, reset, rebuild, backfill, delete, retry,
// skip) and its wiring of PostgreSQL, NATS and the projector runtime.
//
// The projections themselves are Go code, so a projector binary is built
// for its projections: its main passes them to Main. services/projector
// runs the example domain's projections (package examples); a user's own
// binary is the same ten lines with its own definitions:
//
//	func main() {
//		os.Exit(projectorsvc.Main(context.Background(), os.Args[1:], nil, os.Stdout, os.Stderr,
//			func(pool *pgxpool.Pool) []projection.Definer {
//				return []projection.Definer{billing.Invoices(pool), billing.Revenue(pool)}
//			}))
//	}
package projectorsvc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/internal/lease"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/pgpool"
	"github.com/jetproj/jetproj/internal/process"
	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/internal/tracing"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// Definitions returns the projections a projector binary knows, with their
// read models in pool's database. Main calls it once with a nil pool, before
// it connects anywhere, to learn their names (so it must only build
// definitions, not use the pool), and again with the service's pool.
type Definitions func(pool *pgxpool.Pool) []projection.Definer

var lookupEnv = os.LookupEnv

const usage = `Usage: projector [command] [arguments]

Commands:
  run                               run the projections (default); each initialises itself on first start
  status [--json] [name…]           show every projection (or the named ones): state, position, lag, owners, parked partitions
  status --watch [name…]            the same every 2s, redrawn in place on a terminal, until Ctrl-C
  init <name>                       initialise a projection (create its read model); also revives a deleted one
  reset <name>                      clear the read model and positions; running replicas replay it from the start
  rebuild <name>                    the same as reset; derived events are not emitted again during the replay
  rebuild <name> --partition <key>  rebuild one partition (e.g. wallet/w-1) from its first event
  backfill <name>                   wait until running replicas have caught the projection up (lag 0), with a progress bar, rate and ETA
  delete <name> --yes               remove the read model, positions, leases and derived-event stream
  retry <name> <partition>          retry a parked partition from its failing event
  skip <name> <partition>           skip a parked partition's failing event and go on
  start <name>                      start a projection deployed with ManualStart
  live <name> on|off                switch emission of derived events on (new events only) or off
  wait <name> --position N [--timeout D]
                                    wait until the projection has applied the event at position N (default timeout 30s);
                                    exit 0 when it has, 1 on timeout or a parked partition
  healthcheck                       exit 0 when the local replica's /readyz answers 200 (container health check)
  help                              print this help

A partition is "<aggregate_type>/<aggregate_id>" (e.g. wallet/w-1), or
"global" for a global projection. Configuration comes from the environment;
see README.md. Exit codes: 0 done, 1 failed, 2 bad usage or configuration.
`

// command is a parsed command line.
type command struct {
	name      string
	args      []string
	json      bool
	watch     bool
	yes       bool
	partition string
	position  int64         // wait
	timeout   time.Duration // wait
}

// flags each command accepts; value flags take the next argument.
var commandFlags = map[string]map[string]bool{
	"run":      {},
	"status":   {"json": false, "watch": false},
	"init":     {},
	"reset":    {},
	"rebuild":  {"partition": true},
	"backfill": {},
	"delete":   {"yes": false},
	"retry":    {},
	"skip":     {},
	"start":    {},
	"live":     {},
	"wait":     {"position": true, "timeout": true},
}

// parseArgs reads the command and its flags, which may come before or after
// the positional arguments ("--flag", "-flag", "--flag=value").
func parseArgs(args []string) (command, error) {
	c := command{name: "run"}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		c.name, args = args[0], args[1:]
	}
	flags, ok := commandFlags[c.name]
	if !ok {
		return c, fmt.Errorf("unknown command %q", c.name)
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			c.args = append(c.args, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			c.args = append(c.args, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "h" || name == "help" {
			return command{name: "help"}, nil
		}
		takesValue, known := flags[name]
		if !known {
			return c, fmt.Errorf("%s: unknown flag %s", c.name, a)
		}
		switch {
		case takesValue && !hasValue:
			if i+1 >= len(args) {
				return c, fmt.Errorf("%s: flag --%s needs a value", c.name, name)
			}
			i++
			value = args[i]
		case !takesValue && hasValue:
			return c, fmt.Errorf("%s: flag --%s takes no value", c.name, name)
		}
		switch name {
		case "json":
			c.json = true
		case "watch":
			c.watch = true
		case "yes":
			c.yes = true
		case "partition":
			if value == "" {
				return c, fmt.Errorf("%s: --partition needs a partition key such as wallet/w-1", c.name)
			}
			c.partition = value
		case "position":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n <= 0 {
				return c, fmt.Errorf("%s: --position needs a positive event store position, not %q", c.name, value)
			}
			c.position = n
		case "timeout":
			d, err := time.ParseDuration(value)
			if err != nil || d <= 0 {
				return c, fmt.Errorf("%s: --timeout needs a positive duration such as 10s, not %q", c.name, value)
			}
			c.timeout = d
		}
	}
	want := map[string][2]int{ // min, max positional arguments
		"run": {0, 0}, "status": {0, 1 << 20}, "init": {1, 1}, "reset": {1, 1}, "rebuild": {1, 1},
		"backfill": {1, 1}, "delete": {1, 1}, "retry": {2, 2}, "skip": {2, 2}, "start": {1, 1}, "live": {2, 2}, "wait": {1, 1},
	}[c.name]
	switch n := len(c.args); {
	case c.json && c.watch:
		return c, fmt.Errorf("status: --json and --watch do not go together")
	case c.name == "wait" && c.position == 0:
		return c, fmt.Errorf("wait needs --position N, the event store position to wait for")
	case c.name == "live" && (n != 2 || (c.args[1] != "on" && c.args[1] != "off")):
		return c, fmt.Errorf("live needs a projection name and on or off")
	case n < want[0] && want[0] == 2:
		return c, fmt.Errorf("%s needs a projection name and a partition", c.name)
	case n < want[0]:
		return c, fmt.Errorf("%s needs a projection name", c.name)
	case n > want[1]:
		return c, fmt.Errorf("%s: unexpected arguments %q", c.name, c.args[want[1]:])
	}
	return c, nil
}

// Main runs the command in args with the projections of defs and returns
// the exit code: 0 done, 1 failed, 2 bad usage or configuration. environ
// replaces the process environment when not nil (tests); ctx ends the
// command like a first SIGINT or SIGTERM does.
func Main(ctx context.Context, args []string, environ map[string]string, stdout, stderr io.Writer, defs Definitions) int {
	if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, usage)
		return 0
	}
	if len(args) == 1 && args[0] == "healthcheck" {
		return opsserver.HealthcheckCommand(ctx, environ, stderr)
	}
	cmd, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "projector: %v\n\n%s", err, usage)
		return 2
	}
	if cmd.name == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	known, err := names(defs(nil))
	if err != nil {
		fmt.Fprintf(stderr, "projector: %v\n", err)
		return 2
	}
	cfg, err := LoadConfig(environ, known)
	if err != nil {
		fmt.Fprintf(stderr, "projector: %v\n", err)
		return 2
	}
	// The commands' names must be known too.
	switch cmd.name {
	case "run":
	case "status":
		for _, n := range cmd.args {
			if !slices.Contains(known, n) {
				fmt.Fprintf(stderr, "projector: status: no projection %q (known: %s)\n", n, strings.Join(known, ", "))
				return 2
			}
		}
	default:
		if !slices.Contains(known, cmd.args[0]) {
			fmt.Fprintf(stderr, "projector: %s: no projection %q (known: %s)\n", cmd.name, cmd.args[0], strings.Join(known, ", "))
			return 2
		}
	}
	if cmd.name == "delete" && !cmd.yes {
		fmt.Fprintf(stderr, "projector: delete removes %s's read model, positions, leases and derived-event stream; run it again with --yes to go ahead\n", cmd.args[0])
		return 2
	}
	if cmd.name != "run" && cfg.NATS.Embedded() {
		fmt.Fprintf(stderr, "projector: %s needs NATS_URL: the projections' state lives in the NATS server the replicas run against\n", cmd.name)
		return 2
	}

	log := process.NewLogger(stderr, cfg.Log).With("service", "projector")
	ctx, stop := process.SignalContext(ctx, log, os.Exit)
	defer stop()

	// Passing JetStream trouble (a node restarting, a leader moving) is
	// waited for everywhere below, logged once per episode, and fails
	// readiness while it lasts.
	s := &service{cfg: cfg, log: log, stdout: stdout, stderr: stderr, retry: jsretry.New(log)}
	ctx = jsretry.NewContext(ctx, s.retry)
	if err := s.connect(ctx, cmd.name == "run", defs); err != nil {
		if cmd.name == "run" && ctx.Err() != nil {
			log.Info("projector stopped while starting", "error", err)
			return 0
		}
		fmt.Fprintf(stderr, "projector: %v\n", err)
		return 1
	}
	defer s.close()

	switch cmd.name {
	case "run":
		if err = s.run(ctx); err != nil && ctx.Err() != nil {
			// Stopped while starting: a stop, not a failure.
			s.log.Info("projector stopped while starting", "error", err)
			err = nil
		}
	case "status":
		if cmd.watch {
			err = s.watch(ctx, cmd.args)
		} else {
			err = s.status(ctx, cmd.args, cmd.json)
		}
	case "init":
		err = s.init(ctx, cmd.args[0])
	case "reset", "rebuild":
		if cmd.partition != "" {
			err = s.partition(ctx, "rebuild", cmd.args[0], cmd.partition)
		} else {
			err = s.reset(ctx, cmd.name, cmd.args[0])
		}
	case "backfill":
		err = s.backfill(ctx, cmd.args[0])
	case "delete":
		err = s.delete(ctx, cmd.args[0])
	case "retry", "skip":
		err = s.partition(ctx, cmd.name, cmd.args[0], cmd.args[1])
	case "start":
		if err = projector.Start(ctx, s.js(), s.def(cmd.args[0]), s.replicas()); err == nil {
			s.progress("%s started", cmd.args[0])
		}
	case "wait":
		err = s.wait(ctx, cmd.args[0], cmd.position, cmd.timeout)
	case "live":
		live := cmd.args[1] == "on"
		if err = projector.SetLive(ctx, s.js(), s.def(cmd.args[0]), s.replicas(), live); err == nil {
			s.progress("%s is live: %v (emits for events after the source's current end)", cmd.args[0], live)
		}
	}
	if err != nil {
		if cmd.name == "run" {
			log.Error("projector failed", "error", err)
		} else {
			fmt.Fprintf(stderr, "projector: %s: %v\n", cmd.name, err)
		}
		return 1
	}
	return 0
}

// names lists the definitions' names and checks that they are unique.
func names(defs []projection.Definer) ([]string, error) {
	var out []string
	for _, d := range defs {
		n := d.Def().Name()
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("projection %q is defined twice", n)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("this binary defines no projections")
	}
	return out, nil
}

// service is one command's connections and definitions.
type service struct {
	cfg    Config
	log    *slog.Logger
	stdout io.Writer
	stderr io.Writer

	retry *jsretry.Retrier
	pool  *pgxpool.Pool
	conn  *natsconn.Conn
	defs  []*projection.Definition // every definition, in the binary's order
}

func (s *service) connect(ctx context.Context, logConn bool, defs Definitions) error {
	pool, err := pgpool.Open(ctx, s.cfg.DB)
	if err != nil {
		return err
	}
	s.pool = pool
	var connLog *slog.Logger
	if logConn {
		connLog = s.log
	}
	if s.conn, err = natsconn.Connect(ctx, s.cfg.NATS, connLog); err != nil {
		pool.Close()
		return err
	}
	for _, d := range defs(pool) {
		s.defs = append(s.defs, d.Def())
	}
	return nil
}

func (s *service) close() {
	s.conn.Close()
	s.pool.Close()
}

func (s *service) js() jetstream.JetStream { return s.conn.JS }

func (s *service) replicas() int { return s.cfg.Projector.StoreReplicas }

// def returns the named definition (Main checked that it exists).
func (s *service) def(name string) *projection.Definition {
	for _, d := range s.defs {
		if d.Name() == name {
			return d
		}
	}
	panic("projectorsvc: no definition " + name)
}

// selected returns the named definitions, PROJECTIONS when names is empty,
// or all when that is empty too.
func (s *service) selected(names []string) []*projection.Definition {
	if len(names) == 0 {
		names = s.cfg.Projector.Selected()
	}
	if len(names) == 0 {
		return s.defs
	}
	var out []*projection.Definition
	for _, d := range s.defs {
		if slices.Contains(names, d.Name()) {
			out = append(out, d)
		}
	}
	return out
}

func (s *service) progress(format string, args ...any) {
	fmt.Fprintf(s.stdout, format+"\n", args...)
}

func (s *service) run(ctx context.Context) error {
	if limit := process.MemLimitFromCgroup(process.DefaultCgroupFile); limit > 0 {
		s.log.Info("soft memory limit set below the container's", "bytes", limit)
	}
	// A connection the server closed for good ends the replica.
	ctx, stopGuard := s.conn.Guard(ctx)
	defer stopGuard()
	err := s.runGuarded(ctx)
	if lost := s.conn.Err(); lost != nil {
		return lost
	}
	return err
}

func (s *service) runGuarded(ctx context.Context) error {
	defs := s.selected(nil)
	var what []string
	for _, d := range defs {
		what = append(what, projector.OwnStream(d.Name()), "KV_jetproj_leases_"+d.Name())
	}
	s.conn.WarnSingleReplica(s.replicas(), "PROJECTOR_STORE_REPLICAS", append(what, "KV_"+projector.RegistryBucket)...)
	if err := s.waitForSources(ctx, defs); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil
	}
	definers := make([]projection.Definer, len(defs))
	var ns []string
	for i, d := range defs {
		definers[i] = d
		ns = append(ns, d.Name())
	}
	shutdownTracing, err := tracing.Setup(ctx, "jetproj-projector", s.log)
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	defer func() { _ = shutdownTracing(context.Background()) }()
	reg := opsserver.NewRegistry()
	if s.cfg.Projector.Replica == "" {
		// The projector's own default, known here for the status page.
		host, _ := os.Hostname()
		s.cfg.Projector.Replica = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	p, err := projector.New(s.conn.NC, projector.Options{
		Replica:  s.cfg.Projector.Replica,
		LeaseTTL: s.cfg.Projector.LeaseTTL,
		Replicas: s.cfg.Projector.StoreReplicas,
		Retries: projector.RetryPolicy{MaxAttempts: s.cfg.Projector.attempts(),
			BackoffMin: s.cfg.Projector.BackoffMin, BackoffMax: s.cfg.Projector.BackoffMax},
		Logger:     s.log,
		Registerer: reg,
	}, definers...)
	if err != nil {
		return err
	}
	gauges, err := newStatusGauges(reg)
	if err != nil {
		return err
	}
	rctx, stopReport := context.WithCancel(ctx)
	defer stopReport()
	go s.report(rctx, gauges, defs, p)
	ops := opsserver.New(s.cfg.Ops, reg, s.log)
	ops.Ready("nats", opsserver.Public(natsconn.Connected(s.conn.NC)))
	ops.Ready("jetstream", opsserver.Public(s.retry.Check))
	ops.Live("nats", opsserver.Public(s.conn.Alive))
	// PostgreSQL errors name hosts and users: /readyz says "failing",
	// the log has the error.
	ops.Ready("postgres", s.pool.Ping)
	ops.Wedged(p.BusySince)
	if max := s.cfg.Projector.ReadyMaxLag; max > 0 {
		ops.Ready("lag", opsserver.Public(func(context.Context) error { return gauges.behind(max) }))
	}
	ops.Ready("projections", opsserver.Public(func(context.Context) error {
		// Ready once every projection of this replica has a runner: they
		// are initialised and consuming, or on standby for their slots.
		if got, want := len(p.Statuses()), len(definers); got < want {
			return fmt.Errorf("%d of %d projections started", got, want)
		}
		return nil
	}))
	page, err := statuspage.New(statuspage.Options{Config: s.cfg.Page, JS: s.js(), Service: "projector", Instance: s.cfg.Projector.Replica,
		Replicas: s.replicas(), Logger: s.log, Actions: pageActions{s}})
	if err != nil {
		return err
	}
	page.Collect(s.pageCollector(page, p, reg))
	ops.Mount("/", page.Handler())
	s.log.Info("projector starting", "projections", strings.Join(ns, ","), "replica", s.cfg.Projector.Replica, "lease_ttl", s.cfg.Projector.LeaseTTL)
	err = ops.Serve(ctx, page.Beside(p.Run))
	s.log.Info("projector stopped")
	return err
}

// waitForSources waits until the source streams exist: the feeder creates
// EVENTS, and a pipeline's source stream appears with the projection that
// feeds it. Replicas may start before either.
func (s *service) waitForSources(ctx context.Context, defs []*projection.Definition) error {
	// A pipeline stage reads the own stream of a projection run here,
	// which that projection's initialisation creates: do not wait for it.
	own := map[string]bool{}
	for _, d := range defs {
		own[projector.OwnStream(d.Name())] = true
	}
	for _, d := range defs {
		spec := projectionspec.Of(d)
		if spec.CustomSource() != nil || own[spec.SourceConfig().Stream] {
			continue
		}
		name := spec.SourceConfig().Stream
		for logged := false; ; {
			_, err := jsretry.Value(ctx, "source stream "+name, func(ctx context.Context) (jetstream.Stream, error) {
				return s.js().Stream(ctx, name)
			})
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			if !errors.Is(err, jetstream.ErrStreamNotFound) {
				return fmt.Errorf("%s: source stream %s: %w", d.Name(), name, err)
			}
			if !logged {
				s.log.Warn("waiting for the source stream; is the feeder running?", "projection", d.Name(), "stream", name)
				logged = true
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

func (s *service) init(ctx context.Context, name string) error {
	if err := projector.Init(ctx, s.js(), s.def(name), s.replicas()); err != nil {
		return err
	}
	// Delete removed the projection's lease bucket and Init does not make
	// it again; replicas that kept running need it to take the slots back.
	_, err := lease.EnsureBucket(ctx, s.js(), "jetproj_leases_"+name, s.cfg.Projector.LeaseTTL, s.replicas())
	var mismatch *lease.ConfigMismatchError
	if err != nil && !errors.As(err, &mismatch) {
		return err
	}
	s.progress("%s initialised", name)
	return nil
}

func (s *service) reset(ctx context.Context, cmd, name string) error {
	if err := projector.Reset(ctx, s.js(), s.def(name), s.replicas(), s.progress); err != nil {
		return err
	}
	if cmd == "rebuild" {
		s.progress("%s: derived events are not emitted again while it replays; emission resumes with new events", name)
	}
	s.progress("follow it with: projector backfill %s", name)
	return nil
}

func (s *service) delete(ctx context.Context, name string) error {
	if err := projector.Delete(ctx, s.js(), s.def(name), s.replicas(), s.progress); err != nil {
		return err
	}
	s.progress("%s deleted; `projector init %s` brings it back", name, name)
	return nil
}

// A partition command goes to the replica that owns the partition's slot
// and is answered at once; without any replica it runs here. While a slot
// changes hands nobody answers, so each attempt is short and the command is
// tried again until commandTimeout.
var (
	commandTimeout = 30 * time.Second
	attemptTimeout = 5 * time.Second
)

// ErrCommandRefused reports that the NATS server refused this user
// publishing a partition command: in the documented setup only the
// projector admin user may, the replicas' own user only receives them.
var ErrCommandRefused = errors.New("this NATS user may not send partition commands")

// controlPrefix starts the subject of a projection's partition commands
// (jetproj.control.<name>), which pkg/projector owns.
const controlPrefix = "jetproj.control."

// commandRefused reports whether the server refused publishing to the
// projection's control subject. A publish the server refuses is dropped
// and reported asynchronously, with the subject only in the message's
// text: the request itself just goes unanswered.
func (s *service) commandRefused(name string) bool {
	err := s.conn.NC.LastError()
	return errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+controlPrefix+name+`"`)
}

func (s *service) partition(ctx context.Context, op, name, partition string) error {
	d := s.def(name)
	if projectionspec.Of(d).Kind() == projectionspec.Global && partition != projection.GlobalPartition {
		return fmt.Errorf("%s is global: its only partition is %q", name, projection.GlobalPartition)
	}
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	cmd := projector.Command{Op: op, Partition: partition}
	for said := false; ; {
		actx, acancel := context.WithTimeout(ctx, attemptTimeout)
		err := projector.PartitionCommand(actx, s.conn.NC, s.js(), d, s.replicas(), cmd)
		acancel()
		if err == nil {
			break
		}
		unanswered := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, lease.ErrHeld)
		if unanswered && s.commandRefused(name) {
			return fmt.Errorf("%s %s: %w: the server refused publishing to %s%s; run partition commands as the projector admin user (docs/operations.md, \"NATS users and permissions\")",
				name, partition, ErrCommandRefused, controlPrefix, name)
		}
		if !unanswered || ctx.Err() != nil {
			if unanswered {
				return fmt.Errorf("%s %s: no replica answered within %v (is the projection paused, or its replicas stuck?): %w", name, partition, commandTimeout, err)
			}
			return fmt.Errorf("%s %s: %w", name, partition, err)
		}
		if !said {
			s.progress("%s %s: no replica answered yet (its slot may be changing hands); trying again …", name, partition)
			said = true
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	switch op {
	case "retry":
		s.progress("%s %s: retrying from its failing event", name, partition)
	case "skip":
		s.progress("%s %s: failing event skipped; the partition goes on from the next one", name, partition)
	case "rebuild":
		s.progress("%s %s: rebuilding from its first event", name, partition)
	}
	return nil
}
