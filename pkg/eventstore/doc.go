// Package eventstore is jetproj's PostgreSQL event store: the
// eventstore.events table (created by versioned, idempotent migrations),
// Append with optimistic concurrency, and reads by global position, by
// aggregate, and below the transaction horizon for the feeder.
//
// Applications in any language may also INSERT rows directly; the columns
// with defaults (position, metadata, recorded_at, transaction_id) fill
// themselves in.
package eventstore
