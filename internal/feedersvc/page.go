package feedersvc

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

// Lag counts the committed events f has not published yet
// (eventstore.Behind after its cursor), at most once a second however
// often /metrics is scraped and the status page asks: the pool is the
// feeder's.
func Lag(f *feeder.Feeder, pool eventstore.Querier) func(context.Context) (int64, error) {
	return opsserver.Cached(opsserver.DefaultCheckTTL, func(ctx context.Context) (int64, error) {
		return eventstore.Behind(ctx, pool, f.Cursor())
	})
}

// PageCollector publishes a feeder instance's status for the status
// pages: the active instance also reads the store's head, its lag (behind:
// the count jetproj_feeder_lag reports) and the report `feeder status`
// prints.
func PageCollector(f *feeder.Feeder, pool eventstore.Querier, behind func(context.Context) (int64, error), js jetstream.JetStream, cfg feeder.Config, reg prometheus.Gatherer) statuspage.Collector {
	return func(ctx context.Context) (map[string]any, error) {
		c := f.Config()
		st := f.Status()
		snap := statuspage.FeederSnap{Name: c.Name, Stream: c.Stream, Instance: c.Instance, State: st.State,
			Active:    st.State != feeder.StateStandby && st.State != feeder.StateStarting,
			Position:  st.Position,
			Published: statuspage.Metric(reg, "jetproj_feeder_events_published_total", "")[""],
			At:        time.Now().UTC()}
		key := statuspage.Key("feeder", c.Name, c.Instance)
		if !snap.Active {
			return map[string]any{key: snap}, nil
		}
		head, err := eventstore.Head(ctx, pool)
		if err == nil {
			snap.StoreHead = head
			snap.Lag, err = behind(ctx)
		}
		rep, rerr := feeder.ReadReport(ctx, js, cfg)
		if rerr == nil {
			snap.Report = &rep
		}
		if err == nil {
			err = rerr
		}
		return map[string]any{key: snap}, err
	}
}
