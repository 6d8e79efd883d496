// Package bench holds jetproj's benchmarks: programs that measure a
// component against throwaway servers on this machine and print figures that
// compare it with a raw limit measured in the same run, so that the ratio
// means something on a shared, noisy machine.
//
// The command internal/cmd/bench runs them; docs/benchmarks.md records the
// results. The feeder benchmark (Feeder) compares the feeder's backfill with
// a plain relay of the same messages and measures the live latency from an
// append's commit to the event's delivery from the EVENTS stream.
package bench
