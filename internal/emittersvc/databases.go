package emittersvc

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/pgpool"
)

// dbWhere names a database by host, port and name, never by its password;
// empty when the connection string does not parse.
func dbWhere(url string) string {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil || url == "" {
		return ""
	}
	return fmt.Sprintf("%s:%d/%s", pc.ConnConfig.Host, pc.ConnConfig.Port, pc.ConnConfig.Database)
}

// openDatabases opens DATABASE_URL's pool and each of
// EMITTER_TENANT_DATABASE_URLS'. With tenant databases every database is
// named (host:port/database) in logs and on the status page.
func openDatabases(ctx context.Context, cfg Config) ([]emitter.Database, error) {
	urls := append([]string{cfg.DB.URL}, cfg.Emitter.TenantDatabaseURLs...)
	var dbs []emitter.Database
	for _, u := range urls {
		pool, err := pgpool.Open(ctx, pgpool.Config{URL: u, MaxConns: cfg.DB.MaxConns})
		if err != nil {
			closeDatabases(dbs)
			return nil, err
		}
		name := ""
		if len(urls) > 1 {
			name = dbWhere(u)
		}
		dbs = append(dbs, emitter.Database{Name: name, Pool: pool})
	}
	return dbs, nil
}

func closeDatabases(dbs []emitter.Database) {
	for _, d := range dbs {
		d.Pool.Close()
	}
}

// deadLetterCommand runs `emitter dead-letters` or `emitter requeue
// <subject>` on every database of the configuration.
func deadLetterCommand(ctx context.Context, cfg Config, args []string, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	dbs, err := openDatabases(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeDatabases(dbs)
	if args[0] == "requeue" {
		var total int64
		for _, d := range dbs {
			n, err := emitter.Requeue(ctx, d.Pool, args[1])
			if err != nil {
				return fmt.Errorf("requeue %s %s: %w", args[1], d.Name, err)
			}
			if n > 0 && d.Name != "" {
				fmt.Fprintf(stdout, "%s: %d\n", d.Name, n)
			}
			total += n
		}
		if total == 0 {
			return fmt.Errorf("no dead-lettered events of subject %q", args[1])
		}
		fmt.Fprintf(stdout, "requeued %d derived event(s) of %s\n", total, args[1])
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DATABASE\tSUBJECT\tEVENTS\tSINCE\tREASON")
	for _, d := range dbs {
		dead, err := emitter.DeadLettered(ctx, d.Pool)
		if err != nil {
			return fmt.Errorf("dead letter %s: %w", d.Name, err)
		}
		for _, s := range dead {
			name := d.Name
			if name == "" {
				name = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", name, s.Subject, s.Rows, s.Since.UTC().Format(time.RFC3339), strings.Join(strings.Fields(s.Reason), " "))
		}
	}
	return tw.Flush()
}
