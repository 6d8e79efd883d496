package demo

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/jetproj/jetproj/pkg/eventstore"
)

// Writer appends events of the example domain (DESIGN §6): wallets with
// deposits and withdrawals, tickets registered and closed, and orders whose
// placement, payment and delivery arrive in any order.
type Writer struct {
	db     eventstore.Executor
	rng    *rand.Rand
	prefix string
	// open aggregates and their versions
	wallets map[string]int64
	balance map[string]int
	walletN int
	tickets map[string]int64
	orders  int
	// pending are the steps of orders still to be appended.
	pending []orderStep
}

// orderStep is one event of an order's flow: "order", "payment" or "shipment".
type orderStep struct {
	order, kind       string
	customer, carrier string
	total             int
}

// NewWriter returns a Writer that appends to db; seed makes runs repeatable.
// prefix is put before every aggregate id (e.g. "r7-"), so that writers
// started at different times never collide on an aggregate; it may be empty
// on an empty store.
func NewWriter(db eventstore.Executor, seed uint64, prefix string) *Writer {
	return &Writer{db: db, rng: rand.New(rand.NewPCG(seed, 7)), prefix: prefix,
		wallets: map[string]int64{}, balance: map[string]int{}, tickets: map[string]int64{}}
}

// Step appends one business action (one event) and returns the number of
// events it appended.
func (w *Writer) Step(ctx context.Context) (int, error) {
	switch r := w.rng.IntN(10); {
	case r < 5 || len(w.wallets) == 0:
		return w.wallet(ctx)
	case r < 7:
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
	if len(w.wallets) < 5 || w.rng.IntN(12) == 0 {
		w.walletN++
		id := fmt.Sprintf("%sw-%d", w.prefix, w.walletN)
		owners := []string{"ann", "bob", "cyd", "dee", "eve", "fay"}
		v, err := w.append(ctx, "wallet", id, eventstore.ExpectNoStream,
			eventstore.NewEvent{Type: "WalletOpened", Payload: map[string]string{"owner": owners[w.rng.IntN(len(owners))]}})
		if err != nil {
			return 0, err
		}
		w.wallets[id] = v
		return 1, nil
	}
	id := fmt.Sprintf("%sw-%d", w.prefix, 1+w.rng.IntN(w.walletN))
	typ, amount := "MoneyWasAddedToWallet", 100*(1+w.rng.IntN(300))
	if w.rng.IntN(4) == 0 && w.balance[id] >= 100 {
		typ, amount = "MoneyWasWithdrawnFromWallet", 100*(1+w.rng.IntN(w.balance[id]/100))
	}
	v, err := w.append(ctx, "wallet", id, w.wallets[id],
		eventstore.NewEvent{Type: typ, Payload: map[string]int{"amount": amount}})
	if err != nil {
		return 0, err
	}
	w.wallets[id] = v
	if typ == "MoneyWasAddedToWallet" {
		w.balance[id] += amount
	} else {
		w.balance[id] -= amount
	}
	return 1, nil
}

func (w *Writer) ticket(ctx context.Context) (int, error) {
	for id, v := range w.tickets {
		if v == 1 && w.rng.IntN(2) == 0 {
			nv, err := w.append(ctx, "ticket", id, 1, eventstore.NewEvent{Type: "TicketWasClosed", Payload: map[string]string{}})
			if err != nil {
				return 0, err
			}
			w.tickets[id] = nv
			return 1, nil
		}
	}
	id := fmt.Sprintf("%st-%d", w.prefix, len(w.tickets)+1)
	types := []string{"bug", "feature", "question"}
	v, err := w.append(ctx, "ticket", id, eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: "TicketWasRegistered", Payload: map[string]string{"type": types[w.rng.IntN(len(types))]}})
	if err != nil {
		return 0, err
	}
	w.tickets[id] = v
	return 1, nil
}

// order appends the next step of a pending order, or starts a new order
// whose three steps (placed, paid, delivered) come in a random order.
func (w *Writer) order(ctx context.Context) (int, error) {
	if len(w.pending) == 0 || w.rng.IntN(3) == 0 {
		w.orders++
		id := fmt.Sprintf("%so-%d", w.prefix, w.orders)
		customers := []string{"acme", "globex", "initech"}
		carriers := []string{"dhl", "ups", "fedex"}
		for _, k := range []string{"order", "payment", "shipment"} {
			w.pending = append(w.pending, orderStep{order: id, kind: k,
				customer: customers[w.rng.IntN(len(customers))], total: 1000 * (1 + w.rng.IntN(99)),
				carrier: carriers[w.rng.IntN(len(carriers))]})
		}
	}
	i := w.rng.IntN(len(w.pending))
	s := w.pending[i]
	w.pending = append(w.pending[:i], w.pending[i+1:]...)
	var err error
	switch s.kind {
	case "order":
		_, err = w.append(ctx, "order", s.order, eventstore.ExpectNoStream, eventstore.NewEvent{Type: "OrderPlaced",
			Payload: map[string]any{"customer": s.customer, "total": s.total}})
	case "payment":
		_, err = w.append(ctx, "payment", "p-"+s.order, eventstore.ExpectNoStream,
			eventstore.NewEvent{Type: "PaymentSucceeded", Payload: map[string]string{"orderId": s.order}})
	default:
		_, err = w.append(ctx, "shipment", "s-"+s.order, eventstore.ExpectNoStream,
			eventstore.NewEvent{Type: "ShipmentDelivered", Payload: map[string]string{"orderId": s.order, "carrier": s.carrier}})
	}
	if err != nil {
		return 0, err
	}
	return 1, nil
}
