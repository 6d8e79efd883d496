// Package projectiontest runs a projection's handlers in memory, without
// NATS or PostgreSQL: for unit tests of handlers and flush hooks.
//
//	pt := projectiontest.NewPartition(examples.WalletBalanceKV(), "wallet/w-1")
//	err := pt.Apply(ctx, projectiontest.Event("MoneyWasAddedToWallet", examples.MoneyWasAddedToWallet{Amount: 500}))
//	// pt.State, pt.Statements, pt.Emitted
//
// A Partition calls the handlers as the projector does — the handler of the
// event's type, OnAny's for other types, nothing when neither exists; the
// payload decoded into the handler's type — and records what they did:
// the partition's state, the statements Context.Exec queued, the derived
// events Emit and LinkTo recorded. Context.Tx is nil. What the projector
// adds around handlers is not modelled: batches, rolling a failed
// partition back, retries, dropping derived events during a rebuild.
package projectiontest

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/projection"
)

// Partition is one partition of a projection, applied in memory.
type Partition[S any] struct {
	// State is the partition's state: zero at first, set it to start from
	// another; handlers change it in place.
	State *S
	// Statements are what Context.Exec queued, in order. In a projection
	// without a PostgreSQL sink (Postgres or PostgresPerTenant) Exec
	// returns projection.ErrNoPostgres, as in the projector.
	Statements []Statement
	// Emitted are the derived events Emit and LinkTo recorded, in order.
	Emitted []Emission

	spec projectionspec.Spec
	pc   projectionspec.PartitionContext
}

// Statement is one statement queued by Context.Exec.
type Statement struct {
	SQL  string
	Args []any
}

// Emission is one derived event recorded by Context.Emit or LinkTo.
type Emission struct {
	Type    string
	Payload json.RawMessage
	// Links are the streams it is linked to (LinkTo, projection.Link,
	// projection.LinkExisting), in the order named.
	Links []Link
	// LinkOnly: not published on the projection's own stream
	// (projection.LinkOnly).
	LinkOnly bool
	// Metadata is its own metadata (projection.Metadata); the projector
	// adds the source event's.
	Metadata map[string]string
}

// Link is a stream a derived event is linked to.
type Link struct {
	Stream string
	// Existing: named with projection.LinkExisting.
	Existing bool
}

// NewPartition returns the partition key of p, with a zero state.
func NewPartition[S any](p *projection.Projection[S], key string) *Partition[S] {
	spec := projectionspec.Of(p)
	t := &Partition[S]{State: spec.NewState().(*S), spec: spec}
	t.pc.Key = key
	if spec.Settings().Postgres {
		t.pc.Queue = (*queue[S])(t)
	}
	return t
}

type queue[S any] Partition[S]

func (q *queue[S]) Queue(sql string, args ...any) {
	q.Statements = append(q.Statements, Statement{SQL: sql, Args: args})
}

// Event returns the description of an event of type eventType whose
// payload is payload in JSON (a json.RawMessage as it is). It panics when
// payload does not marshal; build a projection.Meta for any other case (a
// payload that is not JSON, metadata, positions).
func Event(eventType string, payload any) projection.Meta {
	raw, err := json.Marshal(payload)
	if err != nil {
		panic(fmt.Sprintf("projectiontest: payload of %s: %v", eventType, err))
	}
	return projection.Meta{Type: eventType, Raw: raw}
}

// Apply runs the handler of each event in turn, stopping at the first
// error. An event's Partition is the partition's key when empty. On an
// error the projector would discard the batch's changes to the state and
// its statements and derived events; Apply keeps them.
func (t *Partition[S]) Apply(ctx context.Context, events ...projection.Meta) error {
	for _, m := range events {
		if m.Partition == "" {
			m.Partition = t.pc.Key
		}
		t.pc.Tenant = m.Tenant()
		if err := t.run(func() error { return t.spec.Apply(ctx, &t.pc, m) }); err != nil {
			return err
		}
	}
	return nil
}

// Flush runs the flush hook, if the projection has one.
func (t *Partition[S]) Flush(ctx context.Context) error {
	return t.run(func() error { return t.spec.Flush(ctx, &t.pc) })
}

func (t *Partition[S]) run(f func() error) error {
	t.pc.State = t.State
	err := f()
	for _, e := range t.pc.Emitted {
		out := Emission{Type: e.Type, Payload: e.Payload, LinkOnly: e.LinkOnly, Metadata: e.Metadata}
		for _, l := range e.Links {
			out.Links = append(out.Links, Link{Stream: l.Stream, Existing: l.Existing})
		}
		t.Emitted = append(t.Emitted, out)
	}
	t.pc.Emitted = t.pc.Emitted[:0]
	return err
}
