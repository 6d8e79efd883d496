// Package projectorsvc is the projector service: its configuration, its
// command line (run, status, init, reset, rebuild, backfill, delete, retry,
// skip, start, live, wait, healthcheck; each declared once, in the table of
// commands.go) and its wiring of PostgreSQL, NATS and the projector
// runtime.
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
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// Definitions returns the projections a projector binary knows, with their
// read models in pool's database. Main calls it once with a nil pool, before
// it connects anywhere, to learn their names (so it must only build
// definitions, not use the pool), and again with the service's pool.
type Definitions func(pool *pgxpool.Pool) []projection.Definer

var lookupEnv = os.LookupEnv

// Main runs the command in args with the projections of defs and returns
// the exit code: 0 done, 1 failed, 2 bad usage or configuration. environ
// replaces the process environment when not nil (tests); ctx ends the
// command like a first SIGINT or SIGTERM does.
func Main(ctx context.Context, args []string, environ map[string]string, stdout, stderr io.Writer, defs Definitions) int {
	cmd, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "projector: %v\n\n%s", err, usage)
		return 2
	}
	if cmd.standalone != nil {
		return cmd.standalone(ctx, environ, stdout, stderr)
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
	for _, n := range cmd.projectionArgs() {
		if !slices.Contains(known, n) {
			fmt.Fprintf(stderr, "projector: %s: no projection %q (known: %s)\n", cmd.name, n, strings.Join(known, ", "))
			return 2
		}
	}
	if cmd.confirm != nil {
		if err := cmd.confirm(cmd); err != nil {
			fmt.Fprintf(stderr, "projector: %v\n", err)
			return 2
		}
	}
	if !cmd.replica && cfg.NATS.Embedded() {
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
	if err := s.connect(ctx, cmd.replica, defs); err != nil {
		if cmd.replica && ctx.Err() != nil {
			log.Info("projector stopped while starting", "error", err)
			return 0
		}
		fmt.Fprintf(stderr, "projector: %v\n", err)
		return 1
	}
	defer s.close()

	if err := cmd.run(ctx, s, cmd); err != nil {
		if cmd.replica {
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

// admin changes the projections' lifecycle; its progress lines go to
// s.stdout.
func (s *service) admin() *projector.Admin {
	return projector.NewAdmin(s.js(), projector.AdminOptions{Replicas: s.replicas(), Progress: s.progress})
}

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
		what = append(what, contract.ProjectionStream(d.Name()), contract.KVStream(contract.LeaseBucket(d.Name())))
	}
	s.conn.WarnSingleReplica(s.replicas(), "PROJECTOR_STORE_REPLICAS", append(what, contract.KVStream(contract.RegistryBucket))...)
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
	if limit := s.cfg.Projector.ReadyMaxLag; limit > 0 {
		ops.Ready("lag", opsserver.Public(func(context.Context) error { return gauges.behind(limit) }))
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
		own[contract.ProjectionStream(d.Name())] = true
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
	if err := s.admin().Init(ctx, s.def(name)); err != nil {
		return err
	}
	// Delete removed the projection's lease bucket and Init does not make
	// it again; replicas that kept running need it to take the slots back.
	_, err := lease.EnsureBucket(ctx, s.js(), contract.LeaseBucket(name), s.cfg.Projector.LeaseTTL, s.replicas())
	var mismatch *lease.ConfigMismatchError
	if err != nil && !errors.As(err, &mismatch) {
		return err
	}
	s.progress("%s initialised", name)
	return nil
}

func (s *service) reset(ctx context.Context, cmd, name string) error {
	if err := s.admin().Reset(ctx, s.def(name)); err != nil {
		return err
	}
	if cmd == "rebuild" {
		s.progress("%s: derived events are not emitted again while it replays; emission resumes with new events", name)
	}
	s.progress("follow it with: projector backfill %s", name)
	return nil
}

func (s *service) start(ctx context.Context, name string) error {
	if err := s.admin().Resume(ctx, s.def(name)); err != nil {
		return err
	}
	s.progress("%s started", name)
	return nil
}

func (s *service) setLive(ctx context.Context, name string, live bool) error {
	if err := s.admin().SetLive(ctx, s.def(name), live); err != nil {
		return err
	}
	s.progress("%s is live: %v (emits for events after the source's current end)", name, live)
	return nil
}

func (s *service) delete(ctx context.Context, name string) error {
	if err := s.admin().Delete(ctx, s.def(name)); err != nil {
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

// commandRefused reports whether the server refused publishing to the
// projection's control subject. A publish the server refuses is dropped
// and reported asynchronously, with the subject only in the message's
// text: the request itself just goes unanswered.
func (s *service) commandRefused(name string) bool {
	err := s.conn.NC.LastError()
	return errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+contract.ControlSubject(name)+`"`)
}

func (s *service) partition(ctx context.Context, op, name, partition string) error {
	d := s.def(name)
	if projectionspec.Of(d).Kind() == projectionspec.Global && partition != projection.GlobalPartition {
		return fmt.Errorf("%s is global: its only partition is %q", name, projection.GlobalPartition)
	}
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	admin := s.admin()
	command := map[string]func(context.Context, projection.Definer, string) error{
		"retry": admin.Retry, "skip": admin.Skip, "rebuild": admin.RebuildPartition,
	}[op]
	for said := false; ; {
		actx, acancel := context.WithTimeout(ctx, attemptTimeout)
		err := command(actx, d, partition)
		acancel()
		if err == nil {
			break
		}
		unanswered := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, lease.ErrHeld)
		if unanswered && s.commandRefused(name) {
			return fmt.Errorf("%s %s: %w: the server refused publishing to %s; run partition commands as the projector admin user (docs/operations.md, \"NATS users and permissions\")",
				name, partition, ErrCommandRefused, contract.ControlSubject(name))
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
