// Package projection is how you write projections: a named definition
// with a source, typed handlers per event type, optional per-partition
// state stored with the position, and hooks for its read model.
//
//	type Balance struct{ Owner string; Cents int64 }
//
//	p := projection.New[Balance]("wallet_balance",
//		projection.FromAggregates("wallet"), // events.wallet.*: one partition per wallet
//		projection.Postgres(pool),           // c.Exec writes in the batch's transaction
//		projection.OnInit(createTable))
//	projection.On(p, func(ctx context.Context, c *projection.Context[Balance], e projection.Event[MoneyWasAddedToWallet]) error {
//		c.State.Cents += e.Data.Amount
//		return nil
//	})
//
// What a definition is made of:
//
//   - New names it and takes its options; On, OnType and OnAny add typed
//     handlers, OnFlush a hook that runs once per partition per batch.
//   - Source: FromAggregates (the feeder's stream; FromStream names
//     another feeder's), FromSubjects (any JetStream subjects; PartitionBy
//     or Partitions place messages in partitions), FromSource (a Source of
//     your own).
//   - Kind: one partition per aggregate by default; Global for one
//     partition that sees every event in stream order.
//   - Read model and state: Postgres, PostgresPerTenant or CustomStore;
//     without them the state, kept in KV, is the read model.
//   - Hooks: OnInit, OnReset, OnDelete, OnResetPartition.
//   - Tuning: BatchSize, CatchUpBatchSize, Retries, Slots, Polling,
//     StateWriteInterval. Deployment: ManualStart, NotLive, Inline.
//   - In a handler, Context holds the partition's State, writes the read
//     model (Exec, Tx) and derives events (Emit, LinkTo, with the options
//     Metadata, Link, LinkOnly, LinkExisting).
//
// Options are named for what they choose — Postgres(pool), BatchSize(n),
// Global(), Metadata(m) — with From… for a source and On… for a hook.
//
// Package projector runs definitions (a *Projection[S] is a Definer): it
// reads their messages, routes them to partitions, runs the handlers in
// batches, and commits state, positions and read-model writes together so
// that every event's effects happen exactly once. Package projectiontest
// runs handlers in memory, for unit tests.
package projection
