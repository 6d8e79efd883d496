package emittersvc

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/statuspage"
)

// maxPageStalls bounds the stalled subjects named on the status page.
const maxPageStalls = 50

// PageCollector publishes this emitter's status for the status pages: the
// stalled subjects (stalled, emitter.Emitter's Stalled) oldest first; the
// active one also counts the outbox backlog of every database.
func PageCollector(cfg emitter.Config, dbs []emitter.Database, stalled func() []emitter.StalledSubject, reg prometheus.Gatherer) statuspage.Collector {
	return func(ctx context.Context) (map[string]any, error) {
		snap := statuspage.EmitterSnap{Name: cfg.Name, Instance: cfg.Instance,
			Active:  statuspage.Metric(reg, "jetproj_emitter_lease_held", "")[""] == 1,
			Stalled: int(statuspage.Metric(reg, "jetproj_emitter_stalled_subjects", "")[""]),
			Emitted: statuspage.Metric(reg, "jetproj_emitter_events_emitted_total", "")[""],
			At:      time.Now().UTC()}
		if stalled != nil {
			st := stalled()
			snap.Stalled = len(st)
			for _, s := range st[:min(len(st), maxPageStalls)] {
				snap.StalledSubjects = append(snap.StalledSubjects, statuspage.StalledSubject{
					Subject: s.Subject, Database: s.Database, Since: s.Since.UTC(), Error: s.Error})
			}
		}
		key := statuspage.Key("emitter", cfg.Name, cfg.Instance)
		if !snap.Active {
			return map[string]any{key: snap}, nil
		}
		for _, d := range dbs {
			var n int64
			err := d.Pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&n)
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
				err = nil // no projection created the outbox yet
			}
			if err != nil {
				return map[string]any{key: snap}, err
			}
			snap.Backlog += n
		}
		return map[string]any{key: snap}, nil
	}
}
