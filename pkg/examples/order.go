package examples

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// CompletedOrdersStream is the public stream order_fulfilment links its
// OrderFullyCompleted events to (subjects completed_orders.>). Deleting the
// projection leaves it in place.
const CompletedOrdersStream = "completed_orders"

// OrderFulfilment is the projection order_fulfilment. It follows the
// aggregates order, payment and shipment, correlates them by order id in the
// table
//
//	order_fulfilment(order_id, placed, customer, total, paid, payment_id,
//	                 delivered, shipment_id, carrier, completed, completed_at)
//
// and, when the last of OrderPlaced, PaymentSucceeded and ShipmentDelivered
// of an order is applied — whatever their order of arrival — emits one
// OrderFullyCompleted {"orderId","customer","total","carrier"}, linked to the
// stream completed_orders.
//
// # Why per aggregate, and the correlation in the row
//
// A partition per order looks natural (Partitions with a provider reading
// the orderId of the payload), but the runtime cannot run it correctly: a
// partition reads its own messages alone — retrying after a handler error,
// skip, rebuilding one partition — with direct gets on one subject, the
// subject of its first message. A partition spread over events.order.<id>,
// events.payment.<p> and events.shipment.<s> would read only one of the
// three there, and move its position past the messages of the other two:
// after a failure, a completion could be lost for good.
//
// A global projection would be correct (one partition, every event in stream
// order), but it runs on one replica and cannot scale.
//
// So order_fulfilment keeps the runtime's default, one partition per
// aggregate (order/<id>, payment/<id>, shipment/<id>): every guarantee of the
// runtime holds as for any partitioned projection, replicas share the work,
// and a failing order does not stop the others. The correlation lives in
// the order's row of the read model, written in the batch's transaction:
// each event upserts its part of the row, and the row lock taken by the
// upsert serialises the three events of an order even when different
// replicas apply them at the same moment. The transaction that applies the
// last missing part therefore sees the other two (they committed before it
// got the lock), marks the row completed and emits, in the transaction that
// also commits its position and the outbox row. Exactly one transaction can
// do so, and any later event sees completed = true: one OrderFullyCompleted
// per order, whatever the arrival order, replicas, kills and redeliveries.
//
// Two replicas whose batches lock two orders' rows in opposite order can
// deadlock; PostgreSQL aborts one statement after deadlock_timeout (1s by
// default), and its partition is retried alone from its position with
// backoff (G4). The retry's transaction locks only its own order's row, so
// it cannot be part of a deadlock: it waits at most for another batch and
// succeeds. The tests see this happen when replicas share a burst of
// interleaved orders; the cost is latency, never a lost or doubled event. Rebuilding one partition
// clears that aggregate's part of the row but keeps completed, so the
// replay does not emit the order again. Derived events are published on the
// subject of the partition whose event completed the order
// (project.order_fulfilment.<payment|shipment|order>.<id>, and
// completed_orders.order_fulfilment.… on the linked stream); the payload
// carries the order id.
func OrderFulfilment(pool *pgxpool.Pool) *projection.Projection[struct{}] {
	p := projection.New[struct{}](OrderFulfilmentName,
		projection.FromAggregates("order", "payment", "shipment"),
		projection.Postgres(pool),
		projection.OnInit(execHook(`CREATE TABLE IF NOT EXISTS order_fulfilment (
    order_id     text PRIMARY KEY,
    placed       boolean NOT NULL DEFAULT false,
    customer     text    NOT NULL DEFAULT '',
    total        bigint  NOT NULL DEFAULT 0,
    paid         boolean NOT NULL DEFAULT false,
    payment_id   text,
    delivered    boolean NOT NULL DEFAULT false,
    shipment_id  text,
    carrier      text    NOT NULL DEFAULT '',
    completed    boolean NOT NULL DEFAULT false,
    completed_at timestamptz
)`)),
		projection.OnReset(execHook(`TRUNCATE order_fulfilment`)),
		projection.OnDelete(execHook(`DROP TABLE IF EXISTS order_fulfilment`)),
		// One aggregate's part of its order's row; completed stays, so the
		// replay does not emit the order a second time.
		projection.OnResetPartition(func(ctx context.Context, tx pgx.Tx, partition string) error {
			var sql string
			switch typeOf(partition) {
			case "order":
				sql = `UPDATE order_fulfilment SET placed = false, customer = '', total = 0 WHERE order_id = $1`
			case "payment":
				sql = `UPDATE order_fulfilment SET paid = false, payment_id = NULL WHERE payment_id = $1`
			case "shipment":
				sql = `UPDATE order_fulfilment SET delivered = false, carrier = '', shipment_id = NULL WHERE shipment_id = $1`
			default:
				return nil
			}
			_, err := tx.Exec(ctx, sql, idOf(partition))
			return err
		}),
	)
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[OrderPlaced]) error {
		return orderStep(ctx, c, e.AggregateID, `INSERT INTO order_fulfilment AS f (order_id, placed, customer, total) VALUES ($1, true, $2, $3)
ON CONFLICT (order_id) DO UPDATE SET placed = true, customer = excluded.customer, total = excluded.total
RETURNING `+orderReturning, e.Data.Customer, e.Data.Total)
	})
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[PaymentSucceeded]) error {
		if e.Data.OrderID == "" {
			return errors.New("PaymentSucceeded without orderId")
		}
		return orderStep(ctx, c, e.Data.OrderID, `INSERT INTO order_fulfilment AS f (order_id, paid, payment_id) VALUES ($1, true, $2)
ON CONFLICT (order_id) DO UPDATE SET paid = true, payment_id = excluded.payment_id
RETURNING `+orderReturning, e.AggregateID)
	})
	projection.On(p, func(ctx context.Context, c *projection.Context[struct{}], e projection.Event[ShipmentDelivered]) error {
		if e.Data.OrderID == "" {
			return errors.New("ShipmentDelivered without orderId")
		}
		return orderStep(ctx, c, e.Data.OrderID, `INSERT INTO order_fulfilment AS f (order_id, delivered, shipment_id, carrier) VALUES ($1, true, $2, $3)
ON CONFLICT (order_id) DO UPDATE SET delivered = true, shipment_id = excluded.shipment_id, carrier = excluded.carrier
RETURNING `+orderReturning, e.AggregateID, e.Data.Carrier)
	})
	return p
}

// orderReturning is what each step's upsert returns: the row as it is now,
// under the row lock the upsert holds until the batch commits.
const orderReturning = `f.placed AND f.paid AND f.delivered AND NOT f.completed, f.customer, f.total, f.carrier`

// orderStep runs one event's upsert of its order's row and, when it
// supplied the last missing part, completes the order and emits.
func orderStep(ctx context.Context, c *projection.Context[struct{}], orderID, upsert string, args ...any) error {
	var done OrderFullyCompleted
	var complete bool
	err := c.Tx().QueryRow(ctx, upsert, append([]any{orderID}, args...)...).Scan(&complete, &done.Customer, &done.Total, &done.Carrier)
	if err != nil || !complete {
		return err
	}
	if _, err := c.Tx().Exec(ctx, `UPDATE order_fulfilment SET completed = true, completed_at = now() WHERE order_id = $1`, orderID); err != nil {
		return err
	}
	done.OrderID = orderID
	return c.LinkTo(CompletedOrdersStream, TypeOrderFullyCompleted, done)
}

// typeOf returns the aggregate type of a partition key "<aggregate_type>/<id>".
func typeOf(partition string) string {
	typ, _, _ := strings.Cut(partition, "/")
	return typ
}

// OrderStep is a step of the order flow, for AppendOrderFlow.
type OrderStep string

const (
	// StepPlaced appends OrderPlaced to aggregate order/<orderId>.
	StepPlaced OrderStep = "placed"
	// StepPaid appends PaymentSucceeded to aggregate payment/p-<orderId>.
	StepPaid OrderStep = "paid"
	// StepDelivered appends ShipmentDelivered to aggregate
	// shipment/s-<orderId>.
	StepDelivered OrderStep = "delivered"
)

// OrderSteps are the three steps of an order's flow.
var OrderSteps = []OrderStep{StepPlaced, StepPaid, StepDelivered}

// ArrivalOrders returns the six orders in which an order's three events can
// arrive.
func ArrivalOrders() [][]OrderStep {
	var out [][]OrderStep
	for _, a := range OrderSteps {
		for _, b := range OrderSteps {
			for _, c := range OrderSteps {
				if a != b && b != c && a != c {
					out = append(out, []OrderStep{a, b, c})
				}
			}
		}
	}
	return out
}

// Order is one order of the example domain, as AppendOrderFlow writes it.
type Order struct {
	ID       string
	Customer string
	Total    int64
	Carrier  string
}

// AppendOrderFlow appends the given steps of order o, each in its own
// transaction, in the order given: OrderPlaced on order/<ID>,
// PaymentSucceeded on payment/p-<ID> and ShipmentDelivered on
// shipment/s-<ID> (each aggregate gets one event). Interleave the steps of
// several orders by calling it with one step at a time; ArrivalOrders lists
// the six orders of the three steps.
func AppendOrderFlow(ctx context.Context, db eventstore.Executor, o Order, steps ...OrderStep) error {
	for _, s := range steps {
		var typ, id string
		var ev eventstore.NewEvent
		switch s {
		case StepPlaced:
			typ, id = "order", o.ID
			ev = eventstore.NewEvent{Type: TypeOrderPlaced, Payload: OrderPlaced{Customer: o.Customer, Total: o.Total}}
		case StepPaid:
			typ, id = "payment", "p-"+o.ID
			ev = eventstore.NewEvent{Type: TypePaymentSucceeded, Payload: PaymentSucceeded{OrderID: o.ID}}
		case StepDelivered:
			typ, id = "shipment", "s-"+o.ID
			ev = eventstore.NewEvent{Type: TypeShipmentDelivered, Payload: ShipmentDelivered{OrderID: o.ID, Carrier: o.Carrier}}
		default:
			return fmt.Errorf("examples: unknown order step %q", s)
		}
		if _, err := eventstore.Append(ctx, db, typ, id, eventstore.ExpectNoStream, ev); err != nil {
			return fmt.Errorf("examples: order %s, step %s: %w", o.ID, s, err)
		}
	}
	return nil
}

// DeliverAndConfirm is a command that reads its own writes: it appends
// o's ShipmentDelivered, waits until order_fulfilment has applied it
// (projector.Waiter: it watches the projection's progress, it does not poll
// the read model) and answers from the read model whether the order is now
// complete. Keep one Waiter for the whole service.
func DeliverAndConfirm(ctx context.Context, pool *pgxpool.Pool, w *projector.Waiter, o Order) (complete bool, err error) {
	res, err := eventstore.Append(ctx, pool, "shipment", "s-"+o.ID, eventstore.ExpectNoStream,
		eventstore.NewEvent{Type: TypeShipmentDelivered, Payload: ShipmentDelivered{OrderID: o.ID, Carrier: o.Carrier}})
	if err != nil {
		return false, fmt.Errorf("examples: deliver order %s: %w", o.ID, err)
	}
	if err := w.WaitFor(ctx, OrderFulfilmentName, res.LastPosition); err != nil {
		return false, fmt.Errorf("examples: deliver order %s: %w", o.ID, err)
	}
	err = pool.QueryRow(ctx, `SELECT completed FROM order_fulfilment WHERE order_id = $1`, o.ID).Scan(&complete)
	return complete, err
}
