package projection

import (
	"github.com/jetproj/jetproj/internal/projectionrt"
)

// Inline marks a projection that is also applied inline: synchronously, in
// the transaction that appends its events (projector.Inline with
// eventstore.WithInline). The same definition runs asynchronously too —
// for a rebuild, or to catch up on events appended without it — and then
// skips the events its inline runs applied already.
//
// An inline projection is partitioned by aggregate (FromAggregates), keeps
// its read model in PostgreSQL (Postgres) and is not global: a global
// projection applied inline would serialise every append.
func Inline() Option { return func(d *Definition) { d.inline = true } }

func (d *Definition) inlineProblems() []string {
	var errs []string
	if d.kind == projectionrt.Global {
		errs = append(errs, "Inline: a global projection cannot be applied inline")
	}
	if len(d.source.AggregateTypes) == 0 {
		errs = append(errs, "Inline needs an aggregate source (FromAggregates)")
	}
	if d.pool == nil {
		errs = append(errs, "Inline needs a PostgreSQL read model (Postgres)")
	}
	if d.customSource != nil || d.partitions != nil {
		errs = append(errs, "Inline: partitions are aggregates (no custom source or PartitionProvider)")
	}
	if d.store != nil {
		errs = append(errs, "Inline keeps positions in jetproj.partitions (no CustomStore)")
	}
	return errs
}
