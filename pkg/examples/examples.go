package examples

import (
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/pkg/projection"
)

// All returns every example projection, with their read models in pool's
// database. Building the definitions does not use pool, so All(nil) is
// enough to learn their names and kinds.
func All(pool *pgxpool.Pool) []projection.Definer {
	return []projection.Definer{
		WalletBalance(pool),
		WalletBalanceKV(),
		TicketDetails(pool),
		TicketCounts(pool),
		OrderFulfilment(pool),
		HighValueWallets(pool),
	}
}

// Names lists the example projections' names, in the order of All.
func Names() []string {
	var names []string
	for _, d := range All(nil) {
		names = append(names, d.Def().Name())
	}
	return names
}

// ByName returns the example projection called name; ok is false when there
// is none.
func ByName(pool *pgxpool.Pool, name string) (d projection.Definer, ok bool) {
	for _, d := range All(pool) {
		if d.Def().Name() == name {
			return d, true
		}
	}
	return nil, false
}
