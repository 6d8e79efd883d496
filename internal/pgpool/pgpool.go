// Package pgpool opens the services' PostgreSQL pools from DATABASE_URL,
// failing fast with errors that never quote the connection string.
package pgpool

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/config"
)

// Config is the PostgreSQL connection of a service.
type Config struct {
	URL      string `env:"DATABASE_URL,required,notEmpty" doc:"PostgreSQL connection string (URL or key=value). TLS through sslmode, sslrootcert, sslcert and sslkey."`
	MaxConns int32  `env:"DATABASE_MAX_CONNS" envDefault:"10" doc:"Connections in the pool at most."`
}

// Validate lists the problems with the configuration.
func (c Config) Validate() []string {
	var p []string
	if c.URL != "" {
		if _, err := pgxpool.ParseConfig(c.URL); err != nil {
			p = append(p, "DATABASE_URL: not a valid PostgreSQL connection string")
		}
	}
	if c.MaxConns < 1 {
		p = append(p, fmt.Sprintf("DATABASE_MAX_CONNS: %d, want at least 1", c.MaxConns))
	}
	return p
}

// Open creates a pool and checks that the server answers. Errors name the
// host, port and database, never the password.
func Open(ctx context.Context, c Config) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(c.URL)
	if err != nil {
		return nil, ErrInvalidURL // the parse error may quote the password
	}
	if c.MaxConns <= 0 { // a Config built without it: DATABASE_MAX_CONNS's default
		c.MaxConns = config.Defaults[Config]().MaxConns
	}
	pc.MaxConns = c.MaxConns
	where := fmt.Sprintf("%s:%d/%s", pc.ConnConfig.Host, pc.ConnConfig.Port, pc.ConnConfig.Database)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres %s: %w", where, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s: %w", where, err)
	}
	return pool, nil
}
