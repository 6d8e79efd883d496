package projectorsvc

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/pkg/projection"
)

// lagInterval is how often the projector service reads its projections'
// status for the lag and parked gauges.
const lagInterval = 15 * time.Second

// statusGauges are the gauges read from the projections' status: what
// alerts watch (lag growing, partitions parked).
type statusGauges struct {
	lag, parked, partitions *prometheus.GaugeVec

	mu sync.Mutex
	// lags are the last lags read, by projection.
	lags map[string]uint64
}

// behind reports the projections more than max messages behind.
func (g *statusGauges) behind(max uint64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var over []string
	for name, lag := range g.lags {
		if lag > max {
			over = append(over, fmt.Sprintf("%s %d", name, lag))
		}
	}
	if len(over) == 0 {
		return nil
	}
	slices.Sort(over)
	return fmt.Errorf("behind by more than %d messages: %s", max, strings.Join(over, ", "))
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

// report reads the status of defs every lagInterval until ctx ends. Every
// replica reports the same figures: alert on max by (projection).
func (s *service) report(ctx context.Context, g *statusGauges, defs []*projection.Definition) {
	t := time.NewTicker(lagInterval)
	defer t.Stop()
	for {
		for _, d := range defs {
			st, err := s.readStatus(ctx, d)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Debug("status for metrics not read", "projection", d.Name(), "error", err)
				}
				continue
			}
			g.lag.WithLabelValues(d.Name()).Set(float64(st.Lag))
			g.mu.Lock()
			g.lags[d.Name()] = st.Lag
			g.mu.Unlock()
			g.parked.WithLabelValues(d.Name()).Set(float64(len(st.Parked)))
			g.partitions.WithLabelValues(d.Name()).Set(float64(st.Partitions))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
