package examples

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projector"
)

// WalletRow is a row of wallet_balance.
type WalletRow struct {
	WalletID string
	Owner    string
	Balance  int64
}

// TicketRow is a row of ticket_details.
type TicketRow struct {
	TicketID string
	Type     string
	Status   string
}

// Counts is the row of ticket_counts.
type Counts struct {
	Open   int64
	Closed int64
}

// The reference fold: what each read model must hold once every event has
// been applied, computed directly from the events (in store order, as
// eventstore.ReadFrom returns them). It decodes payloads the way the
// handlers do; a payload that does not decode is an error.

// FoldWallets returns the rows wallet_balance must hold, by wallet id. The
// documents of wallet_balance_kv hold the same owners and balances.
func FoldWallets(events []eventstore.Event) (map[string]WalletRow, error) {
	rows := map[string]WalletRow{}
	for _, e := range events {
		if e.AggregateType != "wallet" {
			continue
		}
		r, ok := rows[e.AggregateID]
		if !ok {
			r = WalletRow{WalletID: e.AggregateID}
		}
		switch e.Type {
		case TypeWalletOpened:
			var d WalletOpened
			if err := decode(e, &d); err != nil {
				return nil, err
			}
			r.Owner = d.Owner
		case TypeMoneyWasAddedToWallet:
			var d MoneyWasAddedToWallet
			if err := decode(e, &d); err != nil {
				return nil, err
			}
			r.Balance += d.Amount
		case TypeMoneyWasWithdrawnFromWallet:
			var d MoneyWasWithdrawnFromWallet
			if err := decode(e, &d); err != nil {
				return nil, err
			}
			r.Balance -= d.Amount
		default:
			continue // no handler: the projection ignores it
		}
		rows[e.AggregateID] = r
	}
	return rows, nil
}

// FoldTickets returns the rows ticket_details must hold, by ticket id.
func FoldTickets(events []eventstore.Event) (map[string]TicketRow, error) {
	rows := map[string]TicketRow{}
	for _, e := range events {
		if e.AggregateType != "ticket" {
			continue
		}
		r, ok := rows[e.AggregateID]
		if !ok {
			r = TicketRow{TicketID: e.AggregateID}
		}
		switch e.Type {
		case TypeTicketWasRegistered:
			var d TicketWasRegistered
			if err := decode(e, &d); err != nil {
				return nil, err
			}
			r.Type = d.Type
			if !ok {
				r.Status = StatusOpen
			}
		case TypeTicketWasClosed:
			r.Status = StatusClosed
		default:
			continue
		}
		rows[e.AggregateID] = r
	}
	return rows, nil
}

// FoldTicketCounts returns the row ticket_counts must hold.
func FoldTicketCounts(events []eventstore.Event) Counts {
	var c Counts
	for _, e := range events {
		if e.AggregateType != "ticket" {
			continue
		}
		switch e.Type {
		case TypeTicketWasRegistered:
			c.Open++
		case TypeTicketWasClosed:
			c.Open--
			c.Closed++
		}
	}
	return c
}

// CountTickets sums ticket_details rows up by status: with the ticket
// aggregate's rules it equals FoldTicketCounts, and the partitioned
// ticket_details summed up equals the global ticket_counts.
func CountTickets(rows map[string]TicketRow) Counts {
	var c Counts
	for _, r := range rows {
		switch r.Status {
		case StatusOpen:
			c.Open++
		case StatusClosed:
			c.Closed++
		}
	}
	return c
}

func decode(e eventstore.Event, v any) error {
	if len(e.Payload) == 0 {
		return nil
	}
	if err := json.Unmarshal(e.Payload, v); err != nil {
		return fmt.Errorf("examples: %s at position %d: %w", e.Type, e.Position, err)
	}
	return nil
}

// ReadAllEvents reads the whole event store in position order.
func ReadAllEvents(ctx context.Context, db eventstore.Querier) ([]eventstore.Event, error) {
	var all []eventstore.Event
	after := int64(0)
	for {
		page, err := eventstore.ReadFrom(ctx, db, after, 5000)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if len(page) < 5000 {
			return all, nil
		}
		after = page[len(page)-1].Position
	}
}

// ReadWallets reads the table wallet_balance.
func ReadWallets(ctx context.Context, pool *pgxpool.Pool) (map[string]WalletRow, error) {
	rows, err := pool.Query(ctx, `SELECT wallet_id, owner, balance FROM wallet_balance`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]WalletRow{}
	for rows.Next() {
		var r WalletRow
		if err := rows.Scan(&r.WalletID, &r.Owner, &r.Balance); err != nil {
			return nil, err
		}
		out[r.WalletID] = r
	}
	return out, rows.Err()
}

// ReadTickets reads the table ticket_details.
func ReadTickets(ctx context.Context, pool *pgxpool.Pool) (map[string]TicketRow, error) {
	rows, err := pool.Query(ctx, `SELECT ticket_id, type, status FROM ticket_details`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]TicketRow{}
	for rows.Next() {
		var r TicketRow
		if err := rows.Scan(&r.TicketID, &r.Type, &r.Status); err != nil {
			return nil, err
		}
		out[r.TicketID] = r
	}
	return out, rows.Err()
}

// ReadTicketCounts reads the row of ticket_counts.
func ReadTicketCounts(ctx context.Context, pool *pgxpool.Pool) (Counts, error) {
	var c Counts
	err := pool.QueryRow(ctx, `SELECT open, closed FROM ticket_counts WHERE id = 1`).Scan(&c.Open, &c.Closed)
	return c, err
}

// ReadWalletDocs reads every document of wallet_balance_kv, by wallet id,
// through the projection's state store.
func ReadWalletDocs(ctx context.Context, js jetstream.JetStream) (map[string]WalletDoc, error) {
	d := WalletBalanceKV().Def()
	store := projector.StoreFor(js, d, 1)
	out := map[string]WalletDoc{}
	for slot := range d.Spec().Slots {
		recs, _, err := store.LoadSlot(ctx, slot)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			var doc WalletDoc
			if len(r.State) > 0 {
				if err := json.Unmarshal(r.State, &doc); err != nil {
					return nil, fmt.Errorf("examples: %s: %w", r.Key, err)
				}
			}
			out[idOf(r.Key)] = doc
		}
	}
	return out, nil
}
