package projectorsvc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// lagInterval is how often the projector service computes its
// projections' lag (tests shorten it).
var lagInterval = 15 * time.Second

// statusGauges are the gauges read from the projections' status: what
// alerts watch (lag growing, partitions parked).
type statusGauges struct {
	lag, parked, partitions *prometheus.GaugeVec

	mu sync.Mutex
	// lags are the last lags read, by projection.
	lags map[string]uint64
}

// behind reports the projections more than max messages behind.
func (g *statusGauges) behind(limit uint64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var over []string
	for name, lag := range g.lags {
		if lag > limit {
			over = append(over, fmt.Sprintf("%s %d", name, lag))
		}
	}
	if len(over) == 0 {
		return nil
	}
	slices.Sort(over)
	return fmt.Errorf("behind by more than %d messages: %s", limit, strings.Join(over, ", "))
}

func newStatusGauges(reg prometheus.Registerer) (*statusGauges, error) {
	l := []string{"projection"}
	g := &statusGauges{lags: map[string]uint64{},
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetproj_projector_lag",
			Help: "Messages of the projection's source stream after its position (the lowest slot watermark)."}, l),
		parked: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetproj_projector_partitions_parked",
			Help: "Partitions parked now, waiting for projector retry or skip."}, l),
		partitions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetproj_projector_partitions",
			Help: "Partitions the projection knows."}, l),
	}
	for _, c := range []prometheus.Collector{g.lag, g.parked, g.partitions} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// summaryInterval is how often the replica that owns a projection's slot 0
// counts its partitions and parked ones: a count that reads every
// partition's record (a KV bucket's, or a count over its rows), done by one
// replica, not every one.
var summaryInterval = time.Minute

// report sets the gauges of defs until ctx ends. Every lagInterval every
// replica computes each projection's lag from its slots' watermarks and the
// head of its subjects: a few dozen reads, whatever the number of
// partitions (alert and scale on max by (projection)). The replica that owns
// slot 0 also counts partitions and parked ones every summaryInterval; the
// others do not report those gauges.
func (s *service) report(ctx context.Context, g *statusGauges, defs []*projection.Definition, p *projector.Projector) {
	t := time.NewTicker(lagInterval)
	defer t.Stop()
	stores := map[string]projector.StateStore{}
	summarised := map[string]time.Time{}
	for {
		slot0 := map[string]bool{}
		for _, st := range p.Statuses() {
			slot0[st.Projection] = slices.Contains(st.Slots, 0)
		}
		for _, d := range defs {
			name := d.Name()
			store, err := s.metricsStore(ctx, stores, d)
			if err == nil {
				var lag uint64
				if lag, err = s.lag(ctx, d, store); err == nil {
					g.lag.WithLabelValues(name).Set(float64(lag))
					g.mu.Lock()
					g.lags[name] = lag
					g.mu.Unlock()
				}
			}
			if err == nil && slot0[name] && time.Since(summarised[name]) >= summaryInterval {
				var parked []projector.Record
				var n int
				if parked, n, err = store.Summary(ctx); err == nil {
					g.parked.WithLabelValues(name).Set(float64(len(parked)))
					g.partitions.WithLabelValues(name).Set(float64(n))
					summarised[name] = time.Now()
				}
			} else if !slot0[name] {
				g.parked.DeleteLabelValues(name)
				g.partitions.DeleteLabelValues(name)
				delete(summarised, name)
			}
			if err != nil && ctx.Err() == nil {
				s.log.Debug("metrics not read", "projection", name, "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// errNotRunning: the projection is not initialised, or deleted; it has no
// lag to report.
var errNotRunning = errors.New("not initialised or deleted")

// metricsStore returns d's state store, opened once; errNotRunning while d
// is not initialised (opening its store would create its tables).
func (s *service) metricsStore(ctx context.Context, stores map[string]projector.StateStore, d *projection.Definition) (projector.StateStore, error) {
	if st := stores[d.Name()]; st != nil {
		return st, nil
	}
	reg, err := projector.OpenRegistry(ctx, s.js(), s.replicas())
	if err != nil {
		return nil, err
	}
	e, ok, err := reg.Get(ctx, d.Name())
	if err != nil {
		return nil, err
	}
	if !ok || e.State == projector.StateDeleted {
		return nil, errNotRunning
	}
	st := projector.StoreFor(s.js(), d, s.replicas())
	if err := st.Init(ctx); err != nil {
		return nil, err
	}
	stores[d.Name()] = st
	return st, nil
}

// lag is the number of messages on d's subjects after its position, the
// lowest watermark of its slots.
func (s *service) lag(ctx context.Context, d *projection.Definition, store projector.StateStore) (uint64, error) {
	w, ok := store.(interface {
		Watermark(ctx context.Context, slot int) (uint64, error)
	})
	if !ok {
		st, err := s.readStatus(ctx, d)
		return st.Lag, err
	}
	head, ok := s.subjectsHead(ctx, d)
	if !ok {
		stream, err := s.js().Stream(ctx, projectionspec.Of(d).SourceConfig().Stream)
		if err != nil {
			return 0, err
		}
		head = stream.CachedInfo().State.LastSeq
	}
	var pos uint64
	for slot := range projectionspec.Of(d).Settings().Slots {
		wm, err := w.Watermark(ctx, slot)
		if err != nil {
			return 0, err
		}
		if slot == 0 || wm < pos {
			pos = wm
		}
	}
	if head <= pos {
		return 0, nil
	}
	return head - pos, nil
}
