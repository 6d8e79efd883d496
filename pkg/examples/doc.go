// Package examples holds the projections of the example domain (wallets,
// tickets and orders; see docs/contract.md) that the demo, the projector
// service, the end-to-end tests and the documentation use:
//
//   - wallet_balance: partitioned per wallet, a PostgreSQL table
//     wallet_balance(wallet_id, owner, balance); each batch emits one
//     WalletBalanceWasChanged per wallet.
//   - wallet_balance_kv: the same balances as documents in a KV bucket, with
//     no SQL at all, and the same WalletBalanceWasChanged per wallet per
//     batch, carried in each wallet's record and published by the projector.
//   - ticket_details: partitioned per ticket, a table ticket_details(ticket_id,
//     type, status).
//   - ticket_counts: global, a one-row table ticket_counts(open, closed)
//     across all tickets.
//   - order_fulfilment: correlates the aggregates order, payment and
//     shipment by order id in the table order_fulfilment and emits one
//     OrderFullyCompleted per order once it was placed, paid and delivered,
//     in any order, linked to the stream completed_orders.
//   - high_value_wallets: a pipeline stage reading wallet_balance's derived
//     events (project.wallet_balance.>), partitioned per wallet; emits
//     WalletBecameHighValue when a balance reaches 100000 from below.
//
// Each constructor takes what its projection needs and returns a typed
// definition; All returns them all for a projector. The package also holds
// the reference fold (FoldWallets, FoldTickets, FoldTicketCounts,
// FoldOrders, FoldHighValue): what the read models must equal once every
// event has been applied, computed straight from the event store (or, for
// the pipeline stage, from the stream it reads), and the derived events
// expected (ExpectedCompletedOrders). Verify and VerifyDerived compare.
// AppendOrderFlow writes orders whose steps arrive in a chosen order.
package examples
