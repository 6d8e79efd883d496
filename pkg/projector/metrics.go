package projector

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	processed *prometheus.CounterVec
	errors    *prometheus.CounterVec
	retries   *prometheus.CounterVec
	parked    *prometheus.CounterVec
	slots     *prometheus.GaugeVec
	batch     *prometheus.HistogramVec
	sizes     *prometheus.HistogramVec
	buffered  *prometheus.GaugeVec
	writes    *prometheus.CounterVec
	emitted   *prometheus.CounterVec
	waiting   *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	l := []string{"projection"}
	m := &metrics{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetproj_projector_messages_total", Help: "Messages handled (applied or skipped)."}, l),
		errors:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetproj_projector_batch_errors_total", Help: "Batches that did not commit and were read again."}, l),
		retries:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetproj_projector_partition_failures_total", Help: "Handler failures of partitions."}, l),
		parked:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetproj_projector_partitions_parked_total", Help: "Partitions parked after their last attempt."}, l),
		slots:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetproj_projector_slots_owned", Help: "Slots this replica owns."}, l),
		writes:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetproj_projector_records_written_total", Help: "Partition records written to the state store (write-behind writes a partition once for many events)."}, l),
		emitted:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetproj_projector_events_emitted_total", Help: "Derived events of KV-state projections the projector published (the emitter publishes those of Postgres sinks)."}, l),
		waiting:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetproj_projector_partitions_unpublished", Help: "Partitions of KV-state projections whose derived events JetStream refused: they wait in their records and are tried again."}, l),
		batch:     prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "jetproj_projector_batch_seconds", Help: "Batch durations.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, l),
		buffered:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetproj_projector_buffered_bytes", Help: "Payload bytes the consumer holds for the loop (at most 32 MiB, then delivery waits)."}, l),
		sizes:     prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "jetproj_projector_batch_messages", Help: "Messages per batch (catch-up batches grow to CatchUpBatchSize).", Buckets: prometheus.ExponentialBuckets(1, 4, 9)}, l),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.processed, m.errors, m.retries, m.parked, m.slots, m.batch, m.sizes, m.buffered, m.writes, m.emitted, m.waiting} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
