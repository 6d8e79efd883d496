package examples

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/eventstore"
)

// Verify compares the read models of the named example projections (all
// when names is empty) with the reference fold of the event store in pool's
// database, and checks that the global ticket_counts equals the
// partitioned ticket_details summed up (Agree) when both are named. It returns nil when they all agree,
// otherwise an error describing the first differences of each. js is needed
// for wallet_balance_kv only.
//
// Tests call it until it returns nil (the projections catch up
// asynchronously); the end-to-end tests call it after a kill -9.
func Verify(ctx context.Context, pool *pgxpool.Pool, js jetstream.JetStream, names ...string) error {
	if len(names) == 0 {
		names = Names()
	}
	events, err := ReadAllEvents(ctx, pool)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		var err error
		switch name {
		case WalletBalanceName:
			err = verifyWallets(ctx, pool, events)
		case WalletBalanceKVName:
			err = verifyWalletDocs(ctx, js, events)
		case TicketDetailsName:
			err = verifyTickets(ctx, pool, events)
		case TicketCountsName:
			err = verifyCounts(ctx, pool, events)
		default:
			err = fmt.Errorf("no example projection %q (known: %v)", name, Names())
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	if len(errs) == 0 && slices.Contains(names, TicketDetailsName) && slices.Contains(names, TicketCountsName) {
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
	return diff(got, want)
}

func verifyWalletDocs(ctx context.Context, js jetstream.JetStream, events []eventstore.Event) error {
	rows, err := FoldWallets(events)
	if err != nil {
		return err
	}
	want := make(map[string]WalletDoc, len(rows))
	for id, r := range rows {
		want[id] = WalletDoc{Owner: r.Owner, Balance: r.Balance}
	}
	got, err := ReadWalletDocs(ctx, js)
	if err != nil {
		return err
	}
	return diff(got, want)
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
	return diff(got, want)
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

// diff describes how got differs from want (at most five keys).
func diff[V comparable](got, want map[string]V) error {
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
