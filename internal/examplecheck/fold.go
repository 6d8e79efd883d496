package examplecheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
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
		case examples.TypeWalletOpened:
			var d examples.WalletOpened
			if err := decode(e, &d); err != nil {
				return nil, err
			}
			r.Owner = d.Owner
		case examples.TypeMoneyWasAddedToWallet:
			var d examples.MoneyWasAddedToWallet
			if err := decode(e, &d); err != nil {
				return nil, err
			}
			r.Balance += d.Amount
		case examples.TypeMoneyWasWithdrawnFromWallet:
			var d examples.MoneyWasWithdrawnFromWallet
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
		case examples.TypeTicketWasRegistered:
			var d examples.TicketWasRegistered
			if err := decode(e, &d); err != nil {
				return nil, err
			}
			r.Type = d.Type
			if !ok {
				r.Status = examples.StatusOpen
			}
		case examples.TypeTicketWasClosed:
			r.Status = examples.StatusClosed
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
		case examples.TypeTicketWasRegistered:
			c.Open++
		case examples.TypeTicketWasClosed:
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
		case examples.StatusOpen:
			c.Open++
		case examples.StatusClosed:
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
func ReadWalletDocs(ctx context.Context, js jetstream.JetStream) (map[string]examples.WalletDoc, error) {
	d := examples.WalletBalanceKV().Def()
	store := projector.StoreFor(js, d, 1)
	out := map[string]examples.WalletDoc{}
	for slot := range projectionspec.Of(d).Settings().Slots {
		recs, _, err := store.LoadSlot(ctx, slot)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			var doc examples.WalletDoc
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

// OrderRow is a row of order_fulfilment (completed_at left out: it is the
// time of the projection's commit, not of an event).
type OrderRow struct {
	OrderID    string
	Placed     bool
	Customer   string
	Total      int64
	Paid       bool
	PaymentID  string
	Delivered  bool
	ShipmentID string
	Carrier    string
	Completed  bool
}

// FoldOrders returns the rows order_fulfilment must hold, by order id: one
// per order any examples.OrderPlaced, examples.PaymentSucceeded or examples.ShipmentDelivered names,
// completed once all three happened. It relies on the domain's rule that an
// order has one payment and one shipment (with two, the projection's row
// keeps whichever was applied last). A payment or shipment without orderId
// is an error, as it is for the projection.
func FoldOrders(events []eventstore.Event) (map[string]OrderRow, error) {
	rows := map[string]OrderRow{}
	row := func(id string) OrderRow {
		r, ok := rows[id]
		if !ok {
			r = OrderRow{OrderID: id}
		}
		return r
	}
	for _, e := range events {
		var r OrderRow
		switch {
		case e.AggregateType == "order" && e.Type == examples.TypeOrderPlaced:
			var d examples.OrderPlaced
			if err := decode(e, &d); err != nil {
				return nil, err
			}
			r = row(e.AggregateID)
			r.Placed, r.Customer, r.Total = true, d.Customer, d.Total
		case e.AggregateType == "payment" && e.Type == examples.TypePaymentSucceeded:
			var d examples.PaymentSucceeded
			if err := decode(e, &d); err != nil {
				return nil, err
			}
			if d.OrderID == "" {
				return nil, fmt.Errorf("examples: examples.PaymentSucceeded at position %d without orderId", e.Position)
			}
			r = row(d.OrderID)
			r.Paid, r.PaymentID = true, e.AggregateID
		case e.AggregateType == "shipment" && e.Type == examples.TypeShipmentDelivered:
			var d examples.ShipmentDelivered
			if err := decode(e, &d); err != nil {
				return nil, err
			}
			if d.OrderID == "" {
				return nil, fmt.Errorf("examples: examples.ShipmentDelivered at position %d without orderId", e.Position)
			}
			r = row(d.OrderID)
			r.Delivered, r.ShipmentID, r.Carrier = true, e.AggregateID, d.Carrier
		default:
			continue
		}
		r.Completed = r.Completed || r.Placed && r.Paid && r.Delivered
		rows[r.OrderID] = r
	}
	return rows, nil
}

// ExpectedCompletedOrders returns the examples.OrderFullyCompleted events
// order_fulfilment must have emitted, by order id: exactly one per order
// that was placed, paid and delivered, and none for the others.
func ExpectedCompletedOrders(events []eventstore.Event) (map[string]examples.OrderFullyCompleted, error) {
	rows, err := FoldOrders(events)
	if err != nil {
		return nil, err
	}
	out := map[string]examples.OrderFullyCompleted{}
	for id, r := range rows {
		if r.Completed {
			out[id] = examples.OrderFullyCompleted{OrderID: id, Customer: r.Customer, Total: r.Total, Carrier: r.Carrier}
		}
	}
	return out, nil
}

// HighValueRow is a row of high_value_wallets (became_high_at left out).
type HighValueRow struct {
	WalletID  string
	Balance   int64
	HighValue bool
	Crossings int64
}

// FoldHighValue returns the rows high_value_wallets must hold, by wallet
// id, and the examples.WalletBecameHighValue events it must have emitted, in order,
// given the examples.WalletBalanceWasChanged events it reads, in stream order
// (ReadBalanceChanges): a wallet becomes of high value each time its
// balance reaches examples.HighValueThreshold from below.
func FoldHighValue(changes []examples.WalletBalanceWasChanged) (map[string]HighValueRow, []examples.WalletBecameHighValue) {
	rows := map[string]HighValueRow{}
	var emitted []examples.WalletBecameHighValue
	for _, c := range changes {
		r := rows[c.WalletID]
		r.WalletID, r.Balance = c.WalletID, c.Balance
		switch {
		case !r.HighValue && c.Balance >= examples.HighValueThreshold:
			r.HighValue = true
			r.Crossings++
			emitted = append(emitted, examples.WalletBecameHighValue{WalletID: c.WalletID, Balance: c.Balance})
		case r.HighValue && c.Balance < examples.HighValueThreshold:
			r.HighValue = false
		}
		rows[c.WalletID] = r
	}
	return rows, emitted
}

// ReadOrders reads the table order_fulfilment.
func ReadOrders(ctx context.Context, pool *pgxpool.Pool) (map[string]OrderRow, error) {
	rows, err := pool.Query(ctx, `SELECT order_id, placed, customer, total, paid, coalesce(payment_id, ''),
    delivered, coalesce(shipment_id, ''), carrier, completed FROM order_fulfilment`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]OrderRow{}
	for rows.Next() {
		var r OrderRow
		if err := rows.Scan(&r.OrderID, &r.Placed, &r.Customer, &r.Total, &r.Paid, &r.PaymentID,
			&r.Delivered, &r.ShipmentID, &r.Carrier, &r.Completed); err != nil {
			return nil, err
		}
		out[r.OrderID] = r
	}
	return out, rows.Err()
}

// ReadHighValueWallets reads the table high_value_wallets.
func ReadHighValueWallets(ctx context.Context, pool *pgxpool.Pool) (map[string]HighValueRow, error) {
	rows, err := pool.Query(ctx, `SELECT wallet_id, balance, high_value, crossings FROM high_value_wallets`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]HighValueRow{}
	for rows.Next() {
		var r HighValueRow
		if err := rows.Scan(&r.WalletID, &r.Balance, &r.HighValue, &r.Crossings); err != nil {
			return nil, err
		}
		out[r.WalletID] = r
	}
	return out, rows.Err()
}

// DerivedEvent is a message of a derived-event stream.
type DerivedEvent struct {
	Subject string
	Type    string
	MsgID   string
	Data    []byte
}

// ReadDerived reads every message of a stream in order, up to its last
// message when called; a stream that does not exist reads as empty.
func ReadDerived(ctx context.Context, js jetstream.JetStream, stream string) ([]DerivedEvent, error) {
	s, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil, nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	var out []DerivedEvent
	for seq := info.State.FirstSeq - 1; seq < last; {
		// At most the messages left, so the fetch ends with the last one
		// rather than waiting for more.
		batch, err := c.Fetch(int(min(1000, last-seq)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				return nil, err
			}
			if md.Sequence.Stream > last {
				break
			}
			n++
			seq = md.Sequence.Stream
			out = append(out, DerivedEvent{Subject: m.Subject(), Type: m.Headers().Get(contract.HeaderEventType),
				MsgID: m.Headers().Get(jetstream.MsgIDHeader), Data: m.Data()})
			if seq == last {
				break
			}
		}
		if seq == last {
			break
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if n == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("examples: stream %s: read up to %d of %d", stream, seq, last)
		}
	}
	return out, nil
}

// ReadBalanceChanges reads the examples.WalletBalanceWasChanged events on
// wallet_balance's own stream, in stream order: high_value_wallets' input.
func ReadBalanceChanges(ctx context.Context, js jetstream.JetStream) ([]examples.WalletBalanceWasChanged, error) {
	msgs, err := ReadDerived(ctx, js, contract.ProjectionStream(examples.WalletBalanceName))
	if err != nil {
		return nil, err
	}
	var out []examples.WalletBalanceWasChanged
	for _, m := range msgs {
		if m.Type != examples.TypeWalletBalanceWasChanged {
			continue
		}
		var c examples.WalletBalanceWasChanged
		if err := json.Unmarshal(m.Data, &c); err != nil {
			return nil, fmt.Errorf("examples: %s: %w", m.Subject, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// idOf is the aggregate id of an aggregate partition key ("wallet/w1" → "w1").
func idOf(partition string) string {
	_, id, _ := strings.Cut(partition, "/")
	return id
}
