package emittersvc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/pkg/emitter"
	"github.com/jetproj/jetproj/pkg/statuspage"
)

// instanceName is the default EMITTER_INSTANCE: host name and process id.
func instanceName() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "emitter"
	}
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}

// PageCollector publishes this emitter's status for the status pages; the
// active one counts the outbox backlog.
func PageCollector(cfg emitter.Config, pool *pgxpool.Pool, reg prometheus.Gatherer) statuspage.Collector {
	return func(ctx context.Context) (map[string]any, error) {
		snap := statuspage.EmitterSnap{Name: cfg.Name, Instance: cfg.Instance,
			Active:  statuspage.Metric(reg, "jetproj_emitter_lease_held", "")[""] == 1,
			Stalled: int(statuspage.Metric(reg, "jetproj_emitter_stalled_subjects", "")[""]),
			Emitted: statuspage.Metric(reg, "jetproj_emitter_events_emitted_total", "")[""],
			At:      time.Now().UTC()}
		key := statuspage.Key("emitter", cfg.Name, cfg.Instance)
		var err error
		if snap.Active {
			err = pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&snap.Backlog)
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
				err = nil // no projection created the outbox yet
			}
		}
		return map[string]any{key: snap}, err
	}
}
