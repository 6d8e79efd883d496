package demo

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/pgpool"
	"github.com/jetproj/jetproj/internal/process"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

// WriterConfig configures `demo write`, the demo writer of the container
// stack (docker-compose.yml): it appends example events to an existing
// event store until stopped.
type WriterConfig struct {
	DB   pgpool.Config
	Rate int `env:"DEMO_RATE" envDefault:"20" doc:"Business actions (one event each) per second."`
	// Duration 0 writes until stopped.
	Duration time.Duration `env:"DEMO_DURATION" envDefault:"0s" doc:"How long to write; 0: until stopped."`
	Log      process.LogConfig
}

// Validate lists every problem.
func (c WriterConfig) Validate() []string {
	var p []string
	if c.Rate < 1 || c.Rate > 100000 {
		p = append(p, fmt.Sprintf("DEMO_RATE: %d, want 1 to 100000", c.Rate))
	}
	if c.Duration < 0 {
		p = append(p, fmt.Sprintf("DEMO_DURATION: %v, want 0 or more", c.Duration))
	}
	return p
}

// Write migrates the event store and appends example events at cfg.Rate
// until ctx ends or cfg.Duration has passed. Aggregate ids carry a prefix
// unique to the run, so restarts never collide with earlier runs' events.
// It returns the number of events written.
func Write(ctx context.Context, cfg WriterConfig, log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = config.FillDefaults(cfg) // DEMO_RATE's default for a Rate not set
	pool, err := pgpool.Open(ctx, cfg.DB)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		return 0, err
	}
	now := time.Now().UnixNano()
	prefix := "r" + strconv.FormatInt(now/int64(time.Millisecond)%(36*36*36*36*36), 36) + "-"
	w := NewWriter(pool, uint64(now), prefix)
	tick := time.NewTicker(time.Second / time.Duration(max(cfg.Rate, 1)))
	defer tick.Stop()
	var end <-chan time.Time
	if cfg.Duration > 0 {
		end = time.After(cfg.Duration)
	}
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	log.Info("writing example events", "rate", cfg.Rate, "prefix", prefix)
	written := 0
	for {
		select {
		case <-ctx.Done():
			return written, nil
		case <-end:
			return written, nil
		case <-report.C:
			log.Info("events written", "count", written)
		case <-tick.C:
			n, err := w.Step(ctx)
			written += n
			if err != nil {
				if ctx.Err() != nil {
					return written, nil
				}
				return written, err
			}
		}
	}
}
