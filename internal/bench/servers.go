package bench

import (
	"context"
	"errors"
	"fmt"

	"github.com/jetproj/jetproj/pkg/devenv"
)

// Target is where a benchmark runs: a PostgreSQL database (migrated by the
// benchmark) and a NATS server with JetStream. Benchmarks create and delete
// streams and KV buckets on it, so it must be a throwaway.
type Target struct {
	DatabaseURL string
	NATSURL     string
	// NATSNoSync records how the NATS server was started, for the report.
	NATSNoSync bool
}

// Servers are a throwaway PostgreSQL cluster and an embedded NATS server,
// both on loopback, started for one benchmark program.
type Servers struct {
	Postgres *devenv.Postgres
	NATS     *devenv.NATS
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

// Target is what benchmarks run against.
func (s *Servers) Target() Target { return s.target }

// Close stops the servers and removes their directories. Safe to call twice.
func (s *Servers) Close() error {
	var errs []error
	if s.NATS != nil {
		s.NATS.Close()
		s.NATS = nil
	}
	if s.Postgres != nil {
		if err := s.Postgres.Close(); err != nil {
			errs = append(errs, fmt.Errorf("bench: stop postgres: %w", err))
		}
		s.Postgres = nil
	}
	return errors.Join(errs...)
}
