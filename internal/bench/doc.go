// Package bench holds jetproj's benchmarks: programs that measure a
// component against throwaway servers on this machine and print figures that
// compare it with a raw limit measured in the same run, so that the ratio
// means something on a shared, noisy machine.
//
// The command internal/cmd/bench runs them; docs/benchmarks.md records the
// results. The feeder benchmark (Feeder) compares the feeder's backfill with
// a plain relay of the same messages and measures the live latency from an
// append's commit to the event's delivery from the EVENTS stream. The
// pipeline throughput benchmark (PipelineThroughput) runs the feeder,
// projector and emitter service binaries as processes over stored events
// and compares the whole pipeline's rate with the feeder's own.
//
// StartServersWith starts the headline setting: NATS as a nats-server
// process of its own (NATSProcess, built from the module in go.mod) and
// PostgreSQL with its default settings (fsync on).
package bench
