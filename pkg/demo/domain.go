package demo

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/jetproj/jetproj/pkg/eventstore"
)

// Writer appends events of the example domain (DESIGN §6): wallets with
// deposits and withdrawals, tickets registered and closed, and orders that
// are paid and shipped.
type Writer struct {
	db  eventstore.Executor
	rng *rand.Rand
	n   int
	// open aggregates and their versions
	wallets map[string]int64
	tickets map[string]int64
	orders  []string
}

// NewWriter returns a Writer that appends to db; seed makes runs repeatable.
func NewWriter(db eventstore.Executor, seed uint64) *Writer {
	return &Writer{db: db, rng: rand.New(rand.NewPCG(seed, 7)), wallets: map[string]int64{}, tickets: map[string]int64{}}
}

// Step appends one business action (one to three events) and returns the
// number of events it appended.
func (w *Writer) Step(ctx context.Context) (int, error) {
	w.n++
	switch r := w.rng.IntN(10); {
	case r < 5 || len(w.wallets) == 0:
		return w.wallet(ctx)
	case r < 8:
		return w.ticket(ctx)
	default:
		return w.order(ctx)
	}
}

func (w *Writer) append(ctx context.Context, typ, id string, expected int64, evs ...eventstore.NewEvent) (int64, error) {
	res, err := eventstore.Append(ctx, w.db, typ, id, expected, evs...)
	if err != nil {
		return 0, err
	}
	return res.Version, nil
}

func (w *Writer) wallet(ctx context.Context) (int, error) {
	if len(w.wallets) < 5 || w.rng.IntN(10) == 0 {
		id := fmt.Sprintf("w-%d", len(w.wallets)+1)
		owners := []string{"ann", "bob", "cyd", "dee", "eve", "fay"}
		v, err := w.append(ctx, "wallet", id, eventstore.ExpectNoStream,
			eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"owner": owners[w.rng.IntN(len(owners))]}})
		w.wallets[id] = v
		return 1, err
	}
	id := fmt.Sprintf("w-%d", 1+w.rng.IntN(len(w.wallets)))
	typ := "MoneyWasAddedToWallet"
	if w.rng.IntN(3) == 0 {
		typ = "MoneyWasWithdrawnFromWallet"
	}
	v, err := w.append(ctx, "wallet", id, w.wallets[id],
		eventstore.NewEvent{Type: typ, Payload: map[string]int{"amount": 100 * (1 + w.rng.IntN(500))}})
	if err == nil {
		w.wallets[id] = v
	}
	return 1, err
}

func (w *Writer) ticket(ctx context.Context) (int, error) {
	for id, v := range w.tickets {
		if v == 1 && w.rng.IntN(2) == 0 {
			nv, err := w.append(ctx, "ticket", id, 1, eventstore.NewEvent{Type: "TicketWasClosed", Payload: map[string]string{}})
			w.tickets[id] = nv
			return 1, err
		}
	}
	id := fmt.Sprintf("t-%d", len(w.tickets)+1)
	types := []string{"bug", "feature", "question"}
	v, err := w.append(ctx, "ticket", id, eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "TicketWasRegistered", Payload: map[string]string{"type": types[w.rng.IntN(len(types))]}})
	w.tickets[id] = v
	return 1, err
}

func (w *Writer) order(ctx context.Context) (int, error) {
	id := fmt.Sprintf("o-%d", len(w.orders)+1)
	w.orders = append(w.orders, id)
	customers := []string{"acme", "globex", "initech"}
	if _, err := w.append(ctx, "order", id, eventstore.ExpectNoStream, eventstore.NewEvent{Type: "OrderPlaced",
		Payload: map[string]any{"customer": customers[w.rng.IntN(len(customers))], "total": 1000 * (1 + w.rng.IntN(99))}}); err != nil {
		return 0, err
	}
	if _, err := w.append(ctx, "payment", "p-"+id, eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "PaymentSucceeded", Payload: map[string]string{"orderId": id}}); err != nil {
		return 1, err
	}
	carriers := []string{"dhl", "ups", "fedex"}
	_, err := w.append(ctx, "shipment", "s-"+id, eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "ShipmentDelivered", Payload: map[string]string{"orderId": id, "carrier": carriers[w.rng.IntN(len(carriers))]}})
	return 3, err
}
