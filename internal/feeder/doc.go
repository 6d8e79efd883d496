// Package feeder tails the PostgreSQL event store and publishes every
// committed event exactly once to a JetStream stream, on
// <prefix>.<aggregate_type>.<aggregate_id>.
//
// # Gap safety
//
// Positions are assigned at insert but rows become visible at commit, out of
// position order. The feeder reads only rows written by transactions that have
// finished — transaction_id below pg_snapshot_xmin(pg_current_snapshot()) —
// in (transaction_id, position) order. Such rows can no longer change, and no
// future row can sort before them, so the reading order is final: a long
// transaction delays the rows after it, never loses them, and a rolled-back
// row simply never appears.
//
// # Exactly once
//
// Every publish carries the event's deterministic Nats-Msg-Id and the stream
// sequence it expects to follow (Nats-Expected-Last-Sequence). A lost publish
// therefore makes every later one in the pipeline fail too, so the stream
// always holds an exact prefix of the feed, and a restarted feeder resumes
// after the stream's last message (its Event-Transaction and Event-Position
// headers) — whatever the duplicate window. The same expectation fences a
// stale instance that lost its lease. The KV checkpoint only remembers rows
// skipped by filters, so that they are not scanned again.
//
// # One active instance
//
// A KV lease per feeder name keeps one instance publishing; standbys take
// over when it is released or expires.
package feeder
