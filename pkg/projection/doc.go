// Package projection is how users write projections: a named definition
// with a source (aggregate types on the EVENTS stream, or any JetStream
// subjects), a kind (partitioned per aggregate, or global), typed handlers
// per event type, optional per-partition state stored with the position, and
// hooks for init, reset, delete and flush.
//
//	type Balance struct{ Owner string; Cents int64 }
//
//	p := projection.New[Balance]("wallet_balance", projection.FromAggregates("wallet"))
//	projection.On(p, func(ctx context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasAddedToWallet]) error {
//		c.State.Cents += e.Data.Amount
//		return nil
//	})
//
// The projector (package projector) runs definitions: it reads their
// messages, routes them to partitions, runs the handlers in batches, and
// commits state, positions and read-model writes together so that every
// event's effects happen exactly once.
package projection
