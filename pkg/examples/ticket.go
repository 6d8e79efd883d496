package examples

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/projection"
)

// Ticket statuses in ticket_details.
const (
	StatusOpen   = "open"
	StatusClosed = "closed"
)

// TicketDetails is the partitioned projection ticket_details: one row per
// ticket in ticket_details(ticket_id, type, status). It keeps no state: each
// event is one upsert.
func TicketDetails(pool *pgxpool.Pool) *projection.Projection[struct{}] {
	p := projection.New[struct{}](TicketDetailsName,
		projection.FromAggregates("ticket"),
		projection.Postgres(pool),
		projection.OnInit(execHook(`CREATE TABLE IF NOT EXISTS ticket_details (
    ticket_id text PRIMARY KEY,
    type      text NOT NULL DEFAULT '',
    status    text NOT NULL CHECK (status IN ('open', 'closed'))
)`)),
		projection.OnReset(execHook(`TRUNCATE ticket_details`)),
		projection.OnDelete(execHook(`DROP TABLE IF EXISTS ticket_details`)),
		projection.OnResetPartition(func(ctx context.Context, tx pgx.Tx, partition string) error {
			_, err := tx.Exec(ctx, `DELETE FROM ticket_details WHERE ticket_id = $1`, idOf(partition))
			return err
		}),
	)
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[TicketWasRegistered]) error {
		return c.Exec(`INSERT INTO ticket_details (ticket_id, type, status) VALUES ($1, $2, 'open')
ON CONFLICT (ticket_id) DO UPDATE SET type = excluded.type`, e.AggregateID, e.Data.Type)
	})
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[TicketWasClosed]) error {
		return c.Exec(`INSERT INTO ticket_details (ticket_id, status) VALUES ($1, 'closed')
ON CONFLICT (ticket_id) DO UPDATE SET status = 'closed'`, e.AggregateID)
	})
	return p
}

// TicketCounts is the global projection ticket_counts: how many tickets are
// open and closed, in the one-row table ticket_counts(id = 1, open, closed).
// A global projection sees every ticket event in stream order on one
// replica, so the counts are plain increments in the batch's transaction.
// It relies on the ticket aggregate's rules: a ticket is registered once
// and closed at most once, after it was registered.
func TicketCounts(pool *pgxpool.Pool) *projection.Projection[struct{}] {
	zero := execHook(`INSERT INTO ticket_counts (id, open, closed) VALUES (1, 0, 0)
ON CONFLICT (id) DO UPDATE SET open = 0, closed = 0`)
	p := projection.New[struct{}](TicketCountsName,
		projection.FromAggregates("ticket"),
		projection.Global(),
		projection.Postgres(pool),
		projection.OnInit(func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS ticket_counts (
    id     int    PRIMARY KEY CHECK (id = 1),
    open   bigint NOT NULL DEFAULT 0,
    closed bigint NOT NULL DEFAULT 0
);
INSERT INTO ticket_counts (id) VALUES (1) ON CONFLICT (id) DO NOTHING`)
			return err
		}),
		projection.OnReset(zero),
		projection.OnDelete(execHook(`DROP TABLE IF EXISTS ticket_counts`)),
		// The only partition is projection.GlobalPartition: rebuilding it
		// starts the counts over.
		projection.OnResetPartition(func(ctx context.Context, tx pgx.Tx, _ string) error { return zero(ctx, tx) }),
	)
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], _ projection.Event[TicketWasRegistered]) error {
		return c.Exec(`UPDATE ticket_counts SET open = open + 1 WHERE id = 1`)
	})
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], _ projection.Event[TicketWasClosed]) error {
		return c.Exec(`UPDATE ticket_counts SET open = open - 1, closed = closed + 1 WHERE id = 1`)
	})
	return p
}
