package examplecheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
)

// Verify compares the read models of the named example projections (all
// when names is empty) with the reference fold of the event store in pool's
// database, and checks that the global ticket_counts equals the
// partitioned ticket_details summed up (Agree) when both are named. It
// returns nil when they all agree, otherwise an error describing the first
// differences of each. js is needed for wallet_balance_kv and
// high_value_wallets.
//
// high_value_wallets is a pipeline stage: its read model must equal
// FoldHighValue of the examples.WalletBalanceWasChanged events on wallet_balance's
// stream, and that stream must hold every wallet's final balance of the
// event store, so that Verify passes only once the whole pipeline
// (wallet_balance, the emitter, high_value_wallets) caught up. After a
// reset or rebuild of wallet_balance while it was behind, or with it not
// live, its stream lacks balances and high_value_wallets cannot verify.
//
// Verify checks read models; VerifyDerived checks derived events.
//
// Tests call it until it returns nil (the projections catch up
// asynchronously); the end-to-end tests call it after a kill -9.
func Verify(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, names ...string) error {
	if len(names) == 0 {
		names = examples.Names()
	}
	events, err := ReadAllEvents(ctx, pool)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		var err error
		switch name {
		case examples.WalletBalanceName:
			err = verifyWallets(ctx, pool, events)
		case examples.WalletBalanceKVName:
			err = verifyWalletDocs(ctx, js, events)
		case examples.TicketDetailsName:
			err = verifyTickets(ctx, pool, events)
		case examples.TicketCountsName:
			err = verifyCounts(ctx, pool, events)
		case examples.OrderFulfilmentName:
			err = verifyOrders(ctx, pool, events)
		case examples.HighValueWalletsName:
			err = verifyHighValue(ctx, pool, js, events)
		default:
			err = fmt.Errorf("no example projection %q (known: %v)", name, examples.Names())
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	if len(errs) == 0 && slices.Contains(names, examples.TicketDetailsName) && slices.Contains(names, examples.TicketCountsName) {
		if err := Agree(ctx, pool); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Agree checks that the global projection ticket_counts equals the
// partitioned ticket_details summed up by status: two projections of
// different kinds, run side by side from the same events, agree.
func Agree(ctx context.Context, pool *pgxpool.Pool) error {
	rows, err := ReadTickets(ctx, pool)
	if err != nil {
		return err
	}
	global, err := ReadTicketCounts(ctx, pool)
	if err != nil {
		return err
	}
	if summed := CountTickets(rows); summed != global {
		return fmt.Errorf("ticket_counts (global) %+v, ticket_details (partitioned) summed up %+v", global, summed)
	}
	return nil
}

func verifyWallets(ctx context.Context, pool *pgxpool.Pool, events []eventstore.Event) error {
	want, err := FoldWallets(events)
	if err != nil {
		return err
	}
	got, err := ReadWallets(ctx, pool)
	if err != nil {
		return err
	}
	return Diff(got, want)
}

func verifyWalletDocs(ctx context.Context, js jetstream.JetStream, events []eventstore.Event) error {
	rows, err := FoldWallets(events)
	if err != nil {
		return err
	}
	want := make(map[string]examples.WalletDoc, len(rows))
	for id, r := range rows {
		want[id] = examples.WalletDoc{Owner: r.Owner, Balance: r.Balance}
	}
	got, err := ReadWalletDocs(ctx, js)
	if err != nil {
		return err
	}
	return Diff(got, want)
}

func verifyTickets(ctx context.Context, pool *pgxpool.Pool, events []eventstore.Event) error {
	want, err := FoldTickets(events)
	if err != nil {
		return err
	}
	got, err := ReadTickets(ctx, pool)
	if err != nil {
		return err
	}
	return Diff(got, want)
}

func verifyOrders(ctx context.Context, pool *pgxpool.Pool, events []eventstore.Event) error {
	want, err := FoldOrders(events)
	if err != nil {
		return err
	}
	got, err := ReadOrders(ctx, pool)
	if err != nil {
		return err
	}
	return Diff(got, want)
}

func verifyHighValue(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, events []eventstore.Event) error {
	if js == nil {
		return errors.New("needs JetStream to read wallet_balance's stream")
	}
	changes, err := ReadBalanceChanges(ctx, js)
	if err != nil {
		return err
	}
	want, _ := FoldHighValue(changes)
	// The pipeline caught up: the stream ends with every wallet's balance.
	wallets, err := FoldWallets(events)
	if err != nil {
		return err
	}
	final := make(map[string]int64, len(want))
	for id, r := range want {
		final[id] = r.Balance
	}
	stored := make(map[string]int64, len(wallets))
	for id, r := range wallets {
		stored[id] = r.Balance
	}
	if err := Diff(final, stored); err != nil {
		return fmt.Errorf("wallet_balance's stream is behind the event store: %w", err)
	}
	got, err := ReadHighValueWallets(ctx, pool)
	if err != nil {
		return err
	}
	return Diff(got, want)
}

func verifyCounts(ctx context.Context, pool *pgxpool.Pool, events []eventstore.Event) error {
	want := FoldTicketCounts(events)
	got, err := ReadTicketCounts(ctx, pool)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("counts %+v, want %+v", got, want)
	}
	return nil
}

// Diff describes how got differs from want, keyed rows of a read model
// against those of a fold (at most five keys); nil when they are equal.
func Diff[V comparable](got, want map[string]V) error {
	var d []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok {
			d = append(d, fmt.Sprintf("%s missing, want %+v", k, want[k]))
		} else if g != want[k] {
			d = append(d, fmt.Sprintf("%s is %+v, want %+v", k, g, want[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			d = append(d, fmt.Sprintf("%s is %+v, want no such row", k, got[k]))
		}
	}
	if len(d) == 0 {
		return nil
	}
	n := len(d)
	if n > 5 {
		d = append(d[:5], "…")
	}
	return fmt.Errorf("%d of %d differ (%d in the read model): %v", n, len(want), len(got), d)
}

// VerifyDerived checks the derived events of the named example projections
// that emit beyond wallet_balance (order_fulfilment and high_value_wallets;
// both when names is empty) against what the events imply, exactly:
//
//   - order_fulfilment: one examples.OrderFullyCompleted per order that was placed,
//     paid and delivered (ExpectedCompletedOrders), with the expected
//     payload, both on project.order_fulfilment.> and on the linked stream
//     completed_orders, and none for other orders;
//   - high_value_wallets: per wallet, the examples.WalletBecameHighValue events
//     FoldHighValue derives from wallet_balance's stream, in order, each
//     once.
//
// It holds once the projections and the emitter caught up, for projections
// that were never reset, rebuilt or not live (those emit nothing for what
// they replay).
func VerifyDerived(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, names ...string) error {
	if len(names) == 0 {
		names = []string{examples.OrderFulfilmentName, examples.HighValueWalletsName}
	}
	var errs []error
	for _, name := range names {
		var err error
		switch name {
		case examples.OrderFulfilmentName:
			err = verifyCompletedOrders(ctx, pool, js)
		case examples.HighValueWalletsName:
			err = verifyHighValueEmitted(ctx, js)
		default:
			err = fmt.Errorf("no derived events to check for %q", name)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func verifyCompletedOrders(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream) error {
	events, err := ReadAllEvents(ctx, pool)
	if err != nil {
		return err
	}
	want, err := ExpectedCompletedOrders(events)
	if err != nil {
		return err
	}
	var errs []error
	for _, stream := range []string{contract.ProjectionStream(examples.OrderFulfilmentName), examples.CompletedOrdersStream} {
		msgs, err := ReadDerived(ctx, js, stream)
		if err != nil {
			return err
		}
		got := map[string]examples.OrderFullyCompleted{}
		var dups []string
		for _, m := range msgs {
			if m.Type != examples.TypeOrderFullyCompleted {
				continue
			}
			var e examples.OrderFullyCompleted
			if err := json.Unmarshal(m.Data, &e); err != nil {
				return fmt.Errorf("%s: %s: %w", stream, m.Subject, err)
			}
			if _, seen := got[e.OrderID]; seen {
				dups = append(dups, e.OrderID)
			}
			got[e.OrderID] = e
		}
		if len(dups) > 0 {
			errs = append(errs, fmt.Errorf("%s: examples.OrderFullyCompleted more than once for %d orders, e.g. %v", stream, len(dups), dups[:min(5, len(dups))]))
		}
		if err := Diff(got, want); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", stream, err))
		}
	}
	return errors.Join(errs...)
}

func verifyHighValueEmitted(ctx context.Context, js jetstream.JetStream) error {
	changes, err := ReadBalanceChanges(ctx, js)
	if err != nil {
		return err
	}
	_, expected := FoldHighValue(changes)
	msgs, err := ReadDerived(ctx, js, contract.ProjectionStream(examples.HighValueWalletsName))
	if err != nil {
		return err
	}
	want, got := map[string][]int64{}, map[string][]int64{}
	for _, e := range expected {
		want[e.WalletID] = append(want[e.WalletID], e.Balance)
	}
	for _, m := range msgs {
		if m.Type != examples.TypeWalletBecameHighValue {
			continue
		}
		var e examples.WalletBecameHighValue
		if err := json.Unmarshal(m.Data, &e); err != nil {
			return fmt.Errorf("%s: %w", m.Subject, err)
		}
		got[e.WalletID] = append(got[e.WalletID], e.Balance)
	}
	return Diff(joined(got), joined(want))
}

// joined makes per-wallet balance lists comparable.
func joined(m map[string][]int64) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = fmt.Sprint(v)
	}
	return out
}
