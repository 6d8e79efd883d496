// Package projectionrt holds the types package projection fills in for its
// runtime and does not export: a definition's settings, source and kind,
// the untyped partition context handlers work on, and the derived events
// they record. Code outside package projection reads them through package
// projectionspec, which also gives the accessor of a definition.
//
// It imports nothing of jetproj so that package projection can import it;
// projectionspec, which needs projection's own types too, sits above both.
package projectionrt

import (
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Kind is how a projection divides its events.
type Kind int

const (
	// Partitioned projections keep one partition per aggregate (or per
	// partition key of a streaming source): each partition has its own
	// position, state and failures, and partitions are shared by replicas.
	Partitioned Kind = iota
	// Global projections see every event in stream order, in one partition
	// run by exactly one replica at a time (projection.Global).
	Global
)

func (k Kind) String() string {
	if k == Global {
		return "global"
	}
	return "partitioned"
}

// Mode is how the projection is driven.
type Mode int

const (
	// EventDriven projections react to new messages within milliseconds.
	EventDriven Mode = iota
	// Polling projections look for new messages on an interval, for heavy
	// batch work that should not run per event (projection.Polling).
	Polling
)

// SourceConfig says where a projection's messages come from.
type SourceConfig struct {
	// Stream is the JetStream stream, EVENTS by default.
	Stream string
	// Subjects are the filter subjects pushed to the server.
	Subjects []string
	// AggregateTypes is set for sources on the feeder's stream.
	AggregateTypes []string
	// PartitionKey maps a message subject to its partition; nil for
	// aggregate sources (the partition is aggregate_type/aggregate_id).
	PartitionKey func(subject string) string
}

// Settings are the runtime settings of a definition, defaults applied.
type Settings struct {
	BatchSize int
	// CatchUpBatchSize bounds batches while the source is far ahead.
	CatchUpBatchSize int
	MaxAttempts      int
	BackoffMin       time.Duration
	BackoffMax       time.Duration
	Slots            int
	Mode             Mode
	Interval         time.Duration
	// WriteEvery is StateWriteInterval.
	WriteEvery  time.Duration
	Pool        *pgxpool.Pool
	TenantPools map[string]*pgxpool.Pool
	// Postgres: the definition chose a PostgreSQL sink (Postgres or
	// PostgresPerTenant), with a nil pool too (definitions built for
	// tests or to list names).
	Postgres bool
	// Store is CustomStore's store.
	Store any
}

// StatementQueue takes statements to send with the batch (Context.Exec).
type StatementQueue interface {
	Queue(sql string, args ...any)
}

// PartitionContext is the untyped partition context the runtime manages.
// Handlers meet it through projection.Context[S].
type PartitionContext struct {
	Key string
	Tx  pgx.Tx
	// Queue takes the statements of Context.Exec (nil without a
	// PostgreSQL sink).
	Queue  StatementQueue
	Tenant string
	// State is a pointer to the decoded state value (*S).
	State any
	// Emitted collects Emit and LinkTo calls of the current batch.
	Emitted []Emission
}

// Emission is an event derived by a handler or flush hook.
type Emission struct {
	Type    string
	Payload json.RawMessage
	// Links are the streams it is published to besides (or, with
	// LinkOnly, instead of) the projection's own, in the order named.
	Links []LinkStream
	// LinkOnly: not published on the projection's own stream.
	LinkOnly bool
	// Metadata is the emission's own metadata (projection.Metadata); the
	// runtime adds what it carries over from the source event.
	Metadata map[string]string
}

// LinkStream is a stream a derived event is linked to.
type LinkStream struct {
	Stream string `json:"stream"`
	// Existing: the user opted in to a stream jetproj did not create
	// (projection.LinkExisting).
	Existing bool `json:"existing,omitempty"`
}

// view turns a *projection.Definition into its runtime view; package
// projection installs it.
var view func(def any) any

// SetView installs the function that turns a *projection.Definition into
// the value projectionspec.Of returns. Only package projection calls it,
// from its init.
func SetView(f func(def any) any) { view = f }

// View returns the runtime view of def, a *projection.Definition.
func View(def any) any { return view(def) }
