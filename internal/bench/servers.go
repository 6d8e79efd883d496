package bench

import (
	"context"
	"errors"
	"fmt"

	"github.com/jetproj/jetproj/internal/devenv"
)

// Target is where a benchmark runs: a PostgreSQL database (migrated by the
// benchmark) and a NATS server with JetStream. Benchmarks create and delete
// streams and KV buckets on it, so it must be a throwaway.
type Target struct {
	DatabaseURL string
	NATSURL     string
	// NATSNoSync records how the NATS server was started, for the report.
	NATSNoSync bool
	// NATSProcess is set when NATS runs as a process of its own (not
	// embedded in the benchmark's process).
	NATSProcess bool
	// NATSPID is the nats-server process's id when NATSProcess is set.
	NATSPID int
	// NATSCluster is set when NATSURL names the nodes of a cluster of
	// nats-server processes (NATSProcess is set too); NATSPIDs are their
	// process ids, and NATSReplicas the replicas the services give the
	// streams and buckets they create (0: the services' default, 1).
	NATSCluster  bool
	NATSPIDs     []int
	NATSReplicas int
	// PGDurable is set when PostgreSQL runs with its default settings
	// (fsync on).
	PGDurable bool
	// PostgresPID is the postmaster's process id when the benchmark
	// started the server, for its CPU time (0 otherwise).
	PostgresPID int
}

// Describe is the servers in words, for reports.
func (t Target) Describe() string {
	n := fmt.Sprintf("NATS embedded in the benchmark's process, NoSync=%t", t.NATSNoSync)
	if t.NATSProcess {
		n = "NATS a separate nats-server process (default settings)"
	}
	if t.NATSCluster {
		n = fmt.Sprintf("NATS a cluster of %d nats-server processes over loopback routes (default settings), streams and buckets R%d",
			len(t.NATSPIDs), max(t.NATSReplicas, 1))
	}
	pg := "PostgreSQL throwaway, fsync off"
	if t.PGDurable {
		pg = "PostgreSQL throwaway, default settings (fsync on)"
	}
	return n + "; " + pg
}

// ServerOptions choose the servers StartServersWith starts.
type ServerOptions struct {
	// EmbeddedNATS runs NATS in this process (NoSync) rather than as a
	// nats-server process of its own with default settings.
	EmbeddedNATS bool
	// FastPostgres turns fsync off; the default keeps PostgreSQL's default
	// settings (fsync on).
	FastPostgres bool
	// StatStatements loads pg_stat_statements, for benchmarks that report
	// where PostgreSQL spent its time (-pgstat).
	StatStatements bool
}

// Servers are a throwaway PostgreSQL cluster and an embedded NATS server,
// both on loopback, started for one benchmark program.
type Servers struct {
	Postgres *devenv.Postgres
	// NATS is the embedded server, NATSProc the separate one: one is set.
	NATS     *devenv.NATS
	NATSProc *NATSProcess
	target   Target
}

// StartServers starts a non-durable PostgreSQL cluster with a fresh database
// and an embedded NATS server in a temporary directory. The NATS server runs
// without fsync (NoSync): every measured step uses the same server, so the
// figures compare like with like, and they do not measure the disk. Close
// stops both and removes their directories.
func StartServers(ctx context.Context) (*Servers, error) {
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{})
	if err != nil {
		return nil, err
	}
	s := &Servers{Postgres: pg}
	dbURL, err := pg.CreateDatabase(ctx, "bench")
	if err != nil {
		s.Close()
		return nil, err
	}
	n, err := devenv.StartNATS(ctx, devenv.NATSOptions{NoSync: true})
	if err != nil {
		s.Close()
		return nil, err
	}
	s.NATS = n
	s.target = Target{DatabaseURL: dbURL, NATSURL: n.URL(), NATSNoSync: true}
	return s, nil
}

// StartServersWith starts a throwaway PostgreSQL cluster with a fresh
// database and a NATS server as o asks. The defaults are the headline
// setting: nats-server as its own process with default settings, built from
// the module in go.mod, and PostgreSQL with fsync on. Close stops both and
// removes their directories.
func StartServersWith(ctx context.Context, o ServerOptions) (*Servers, error) {
	po := devenv.PostgresOptions{Durable: !o.FastPostgres}
	if o.StatStatements {
		po.Settings = map[string]string{"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"}
	}
	pg, err := devenv.StartPostgres(ctx, po)
	if err != nil {
		return nil, err
	}
	s := &Servers{Postgres: pg}
	dbURL, err := pg.CreateDatabase(ctx, "bench")
	if err != nil {
		s.Close()
		return nil, err
	}
	s.target = Target{DatabaseURL: dbURL, PGDurable: !o.FastPostgres, PostgresPID: pg.PID()}
	if o.EmbeddedNATS {
		n, err := devenv.StartNATS(ctx, devenv.NATSOptions{NoSync: true})
		if err != nil {
			s.Close()
			return nil, err
		}
		s.NATS = n
		s.target.NATSURL, s.target.NATSNoSync = n.URL(), true
		return s, nil
	}
	n, err := StartNATSProcess(ctx)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.NATSProc = n
	s.target.NATSURL, s.target.NATSProcess, s.target.NATSPID = n.URL(), true, n.PID()
	return s, nil
}

// Target is what benchmarks run against.
func (s *Servers) Target() Target { return s.target }

// Close stops the servers and removes their directories. Safe to call twice.
func (s *Servers) Close() error {
	var errs []error
	if s.NATS != nil {
		s.NATS.Close()
		s.NATS = nil
	}
	if s.NATSProc != nil {
		s.NATSProc.Close()
		s.NATSProc = nil
	}
	if s.Postgres != nil {
		if err := s.Postgres.Close(); err != nil {
			errs = append(errs, fmt.Errorf("bench: stop postgres: %w", err))
		}
		s.Postgres = nil
	}
	return errors.Join(errs...)
}
