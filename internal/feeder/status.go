package feeder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/pkg/eventstore"
)

// States of a feeder.
const (
	StateStarting = "starting"
	StateStandby  = "standby"   // another instance holds the lease
	StateFeeding  = "feeding"   // publishing a backlog
	StateCaughtUp = "caught-up" // waiting for new events
	StateRetrying = "retrying"  // a dependency failed; retrying with backoff
	StateStalled  = "stalled"   // stopped at an event it cannot publish
	StateFailed   = "failed"    // cannot go on (configuration)
)

// Status is a snapshot of what a feeder is doing.
type Status struct {
	Name     string `json:"name"`
	Stream   string `json:"stream"`
	Instance string `json:"instance,omitempty"`
	State    string `json:"state"`
	// Position is the highest store position acknowledged by JetStream;
	// Cursor, where the next read starts (transaction id/position: events
	// are read in that order, so an older transaction's positions may come
	// after a younger one's).
	Position  int64      `json:"position"`
	Cursor    string     `json:"cursor"`
	StreamSeq uint64     `json:"stream_seq"`
	Error     string     `json:"error,omitempty"`
	Updated   time.Time  `json:"updated"`
	Stalled   *Oversized `json:"stalled_at,omitempty"`
}

// Oversized names an event the feeder could not publish.
type Oversized struct {
	Position      int64  `json:"position"`
	AggregateType string `json:"aggregate_type"`
	AggregateID   string `json:"aggregate_id"`
	EventType     string `json:"event_type"`
	Size          int64  `json:"size"`
	MaxPayload    int64  `json:"max_payload"`
	// MaxMsgSize is set when the stream refused the event for its
	// max_msg_size (the server's max payload would have taken it).
	MaxMsgSize int64  `json:"max_msg_size,omitempty"`
	Stream     string `json:"stream,omitempty"`
}

// Status returns what the feeder is doing now.
func (f *Feeder) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

// Cursor returns where the events this instance had acknowledged end: every
// event at or before it is in the stream. eventstore.Behind(Cursor()) is its
// lag.
func (f *Feeder) Cursor() eventstore.Cursor {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cursor
}

func (f *Feeder) setState(state string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status.State, f.status.Updated, f.status.Instance = state, time.Now().UTC(), f.cfg.Instance
	f.status.Error, f.status.Stalled = "", nil
	if err != nil {
		f.status.Error = err.Error()
		var over *OversizedError
		if errors.As(err, &over) {
			o := Oversized(*over)
			f.status.Stalled = &o
		}
	}
}

func (f *Feeder) setProgress(ck Checkpoint, high int64, state string) {
	f.mu.Lock()
	f.status.Position, f.status.Cursor, f.status.StreamSeq = high, ck.Cursor.String(), ck.StreamSeq
	f.cursor = ck.Cursor
	f.mu.Unlock()
	if state != "" && state != f.Status().State {
		f.setState(state, nil)
	}
}

// saveStatus publishes the status to the state bucket, where `feeder status`
// and other instances read it.
func (f *Feeder) saveStatus(ctx context.Context) {
	b, _ := json.Marshal(f.Status())
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := f.state.Put(ctx, statusKey(f.cfg.Name), b); err != nil {
		f.log.Warn("status not saved", logError, err)
	}
}

// Report is what `feeder status` shows: the saved status and checkpoint of a
// feeder, read from its state bucket.
type Report struct {
	Status     *Status     `json:"status,omitempty"`
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
}

// ReadReport reads a feeder's saved status and checkpoint.
func ReadReport(ctx context.Context, js jetstream.JetStream, cfg Config) (Report, error) {
	cfg = cfg.Defaults()
	var r Report
	kv, err := js.KeyValue(ctx, cfg.StateBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	for key, dst := range map[string]any{statusKey(cfg.Name): &r.Status, checkpointKey(cfg.Name): &r.Checkpoint} {
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return r, err
		}
		if err := json.Unmarshal(e.Value(), dst); err != nil {
			return r, fmt.Errorf("feeder: %s: %w", key, err)
		}
	}
	return r, nil
}

type metrics struct {
	published, oversized, deadLettered, errors prometheus.Counter
	position, active, inflight                 prometheus.Gauge
	pageBytes                                  prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, name string) (*metrics, error) {
	labels := prometheus.Labels{"feeder": name}
	m := &metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetproj_feeder_events_published_total",
			Help: "Events published and acknowledged by JetStream.", ConstLabels: labels}),
		oversized: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetproj_feeder_events_oversized_total",
			Help: "Events larger than the server's max payload or refused for the stream's max_msg_size.", ConstLabels: labels}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetproj_feeder_events_dead_lettered_total",
			Help: "Events moved to eventstore.dead_letters.", ConstLabels: labels}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetproj_feeder_errors_total",
			Help: "Feeding interruptions (PostgreSQL or NATS errors) that were retried.", ConstLabels: labels}),
		position: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetproj_feeder_position",
			Help: "Highest store position acknowledged by JetStream.", ConstLabels: labels}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetproj_feeder_lease_held",
			Help: "1 while this instance holds the feeder's lease.", ConstLabels: labels}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetproj_feeder_inflight_bytes",
			Help: "Bytes of the publishes awaiting their acknowledgement (at most about FEEDER_PAGE_BYTES).", ConstLabels: labels}),
		pageBytes: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "jetproj_feeder_page_bytes",
			Help:    "Payload and metadata bytes of each page of events read (at most FEEDER_PAGE_BYTES, or one larger event alone).",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 10), ConstLabels: labels}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.published, m.oversized, m.deadLettered, m.errors, m.position, m.active, m.inflight, m.pageBytes} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("feeder: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
