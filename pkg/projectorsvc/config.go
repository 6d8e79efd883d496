package projectorsvc

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/lease"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/pgpool"
	"github.com/jetproj/jetproj/internal/process"
	"github.com/jetproj/jetproj/internal/statuspage"
)

// Config is the projector service's configuration, read from the
// environment.
type Config struct {
	DB        pgpool.Config
	NATS      natsconn.Config
	Log       process.LogConfig
	Projector Settings
	Ops       opsserver.Config
	Page      statuspage.Config
}

// Settings are the projector's own variables.
type Settings struct {
	Projections   []string      `env:"PROJECTIONS" envSeparator:"," doc:"Projections this replica runs, comma-separated (empty: every projection the binary defines). An unknown name is a configuration error that lists the known ones."`
	Replica       string        `env:"PROJECTOR_REPLICA" doc:"This replica's name in slot leases and in status (default: host name and process id): up to 64 characters of [A-Za-z0-9_-] and inner dots. Unique among the running replicas."`
	LeaseTTL      time.Duration `env:"PROJECTOR_LEASE_TTL" envDefault:"6s" doc:"Time to live of slot leases: the partitions of a replica that died move to the others within about this long plus a third. Every replica of a projection must use the same value."`
	StoreReplicas int           `env:"PROJECTOR_STORE_REPLICAS" envDefault:"1" doc:"Replicas of the KV buckets the projector creates (registry, leases, state): 1, 3 or 5."`
	ReadyMaxLag   uint64        `env:"PROJECTOR_READY_MAX_LAG" envDefault:"0" doc:"/readyz fails while a projection of this replica is more than this many messages behind its source (read every 15s). 0: lag does not affect readiness (a rebuilding projection stays ready)."`
	MaxAttempts   *int          `env:"PROJECTOR_MAX_ATTEMPTS" doc:"Attempts of a failing partition before it is parked, for every projection: 1 to 1000 (empty: each projection's own, 5 unless it sets Retries)."`
	BackoffMin    time.Duration `env:"PROJECTOR_BACKOFF_MIN" doc:"Wait before a failing partition's first retry, doubling after each failure, for every projection (empty: each projection's own, 100ms unless it sets Retries)."`
	BackoffMax    time.Duration `env:"PROJECTOR_BACKOFF_MAX" doc:"Longest wait between retries, for every projection (empty: each projection's own, 30s unless it sets Retries)."`
}

// maxAttempts bounds PROJECTOR_MAX_ATTEMPTS: past it a failing partition
// would practically never be parked.
const maxAttempts = 1000

// maxPoolConns bounds DATABASE_MAX_CONNS: PostgreSQL's own default allows
// 100 connections for every client together.
const maxPoolConns = 1000

// replicaRE is what a replica name may be: it becomes part of KV keys
// (m.<replica>) and lease values, and status prints it.
var replicaRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

// Validate lists the problems across the service's settings; each nested
// struct's own Validate reports the rest.
func (c Config) Validate() []string {
	if c.DB.MaxConns > maxPoolConns {
		return []string{fmt.Sprintf("DATABASE_MAX_CONNS: %d, want at most %d", c.DB.MaxConns, maxPoolConns)}
	}
	return nil
}

// Validate lists the problems with the settings that need no knowledge of
// the binary's projections.
func (s Settings) Validate() []string {
	var p []string
	if s.LeaseTTL < lease.MinTTL {
		p = append(p, fmt.Sprintf("PROJECTOR_LEASE_TTL: %v, want at least %v", s.LeaseTTL, lease.MinTTL))
	}
	if s.MaxAttempts != nil && (*s.MaxAttempts < 1 || *s.MaxAttempts > maxAttempts) {
		p = append(p, fmt.Sprintf("PROJECTOR_MAX_ATTEMPTS: %d, want 1 to %d (unset: each projection's own)", *s.MaxAttempts, maxAttempts))
	}
	if s.Replica != "" && (len(s.Replica) > 64 || !replicaRE.MatchString(s.Replica)) {
		p = append(p, fmt.Sprintf("PROJECTOR_REPLICA: %q, want up to 64 characters of [A-Za-z0-9_-] and inner dots (it names the replica in KV keys)", s.Replica))
	}
	if s.BackoffMin < 0 || s.BackoffMax < 0 {
		p = append(p, "PROJECTOR_BACKOFF_MIN, PROJECTOR_BACKOFF_MAX: want positive durations")
	}
	if s.BackoffMin > 0 && s.BackoffMax > 0 && s.BackoffMax < s.BackoffMin {
		p = append(p, fmt.Sprintf("PROJECTOR_BACKOFF_MAX: %v is below PROJECTOR_BACKOFF_MIN %v", s.BackoffMax, s.BackoffMin))
	}
	switch s.StoreReplicas {
	case 1, 3, 5:
	default:
		p = append(p, fmt.Sprintf("PROJECTOR_STORE_REPLICAS: %d, want 1, 3 or 5", s.StoreReplicas))
	}
	return p
}

// attempts is PROJECTOR_MAX_ATTEMPTS, 0 when unset (each projection's own).
func (s Settings) attempts() int {
	if s.MaxAttempts == nil {
		return 0
	}
	return *s.MaxAttempts
}

// Selected returns the names in PROJECTIONS, trimmed, without empty entries
// and duplicates.
func (s Settings) Selected() []string {
	var out []string
	for _, n := range s.Projections {
		if n = strings.TrimSpace(n); n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// Prefixes are the variable prefixes checked for typos.
var Prefixes = []string{"PROJECTOR_", "PROJECTIONS", "NATS_", "LOG_", "DATABASE_", "OPS_"}

// LoadConfig reads the configuration from environ (the process environment
// when nil) and reports every problem at once: values that do not parse or
// are out of range, variables with the service's prefixes that it does not
// know, and names in PROJECTIONS that are not among known. The error
// matches config.ErrInvalid.
func LoadConfig(environ map[string]string, known []string) (Config, error) {
	opts := []config.Option{config.WithPrefixCheck(Prefixes...)}
	if environ != nil {
		opts = append(opts, config.WithEnvironment(environ))
	}
	cfg, err := config.Load[Config](opts...)
	var problems []string
	var cerr *config.Error
	switch {
	case errors.As(err, &cerr):
		problems = cerr.Problems
	case err != nil:
		return cfg, err
	}
	// Load returns the zero Config with its problems: read PROJECTIONS
	// alone to check the names too.
	sel := cfg.Projector.Selected()
	if err != nil {
		sel = selectedFrom(environ)
	}
	for _, n := range sel {
		if !slices.Contains(known, n) {
			problems = append(problems, fmt.Sprintf("PROJECTIONS: no projection %q (known: %s)", n, strings.Join(known, ", ")))
		}
	}
	if len(problems) > 0 {
		return Config{}, &config.Error{Problems: problems}
	}
	return cfg, nil
}

func selectedFrom(environ map[string]string) []string {
	v, ok := environ["PROJECTIONS"]
	if environ == nil {
		v, ok = lookupEnv("PROJECTIONS")
	}
	if !ok {
		return nil
	}
	return Settings{Projections: strings.Split(v, ",")}.Selected()
}
