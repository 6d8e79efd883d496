package projection

import "github.com/jetproj/jetproj/pkg/contract"

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

// IsInline reports whether the definition was marked with Inline.
func (d *Definition) IsInline() bool { return d.inline }

// AggregatePrefix is the subject prefix of an aggregate source's events:
// "events" for the feeder's stream, FromStream's prefix otherwise; empty
// for other sources.
func (d *Definition) AggregatePrefix() string {
	if len(d.source.AggregateTypes) == 0 {
		return ""
	}
	if d.aggStream != "" {
		return d.aggPrefix
	}
	return contract.EventsPrefix
}

func (d *Definition) inlineProblems() []string {
	var errs []string
	if d.kind == Global {
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
