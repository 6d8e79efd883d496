package eventstore

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// InlineProjection is a projection applied inline: synchronously, in the
// transaction that appends the events it sees (Marten's and Ecotone's
// inline projections). projector.Inline builds one from a projection
// definition; eventstore knows only this interface.
type InlineProjection interface {
	// ApplyInline applies events — one aggregate's, just appended in tx,
	// in version order — writing the read model in tx. An error fails the
	// append.
	ApplyInline(ctx context.Context, tx pgx.Tx, events []Event) error
}

// Appender appends events and applies inline projections to them in the
// same transaction. Its zero value appends like the package functions.
type Appender struct {
	inline []InlineProjection
}

// WithInline returns an Appender that applies projections, in order, to
// every append, in the appending transaction: the read models change with
// the events or not at all, and a projection's error fails the append.
func WithInline(projections ...InlineProjection) Appender {
	a := Appender{}
	for _, p := range projections {
		if p != nil {
			a.inline = append(a.inline, p)
		}
	}
	return a
}

// Append is the package's Append, with the inline projections applied
// before the commit. A projection's error is returned wrapped in
// ErrInlineProjection, and nothing is stored.
func (a Appender) Append(ctx context.Context, db Executor, aggregateType, aggregateID string, expected int64, events ...NewEvent) (AppendResult, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return AppendResult{}, fmt.Errorf("eventstore: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	res, err := a.AppendTx(ctx, tx, aggregateType, aggregateID, expected, events...)
	if err != nil {
		return res, err
	}
	if err := tx.Commit(ctx); err != nil {
		return AppendResult{}, fmt.Errorf("eventstore: commit: %w", err)
	}
	return res, nil
}

// AppendTx is the package's AppendTx, with the inline projections applied
// in tx. When it returns an error the caller must roll tx back: a
// projection may have written part of its read model, or PostgreSQL may
// have aborted the transaction.
func (a Appender) AppendTx(ctx context.Context, tx pgx.Tx, aggregateType, aggregateID string, expected int64, events ...NewEvent) (AppendResult, error) {
	res, stored, err := appendTx(ctx, tx, aggregateType, aggregateID, expected, events, len(a.inline) > 0)
	if err != nil {
		return AppendResult{}, err
	}
	for _, p := range a.inline {
		if err := p.ApplyInline(ctx, tx, stored); err != nil {
			return AppendResult{}, fmt.Errorf("%w: %w", ErrInlineProjection, err)
		}
	}
	return res, nil
}
