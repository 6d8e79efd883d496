package projector

import (
	"context"
	"fmt"

	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/projection"
)

// refreshInline, for a projection that is also applied inline, reads the
// records of a batch's partitions in the batch's transaction and locks
// them until it ends: an inline append may have moved a record since the
// runner cached it, and none can move it now until the batch commits.
// A record that moved replaces the cached one (its decoded state too);
// appliedInline then skips the events it covers.
func (r *runner) refreshInline(ctx context.Context, b Batch, order []*work) error {
	if !r.def.IsInline() || len(order) == 0 || b.Tx() == nil {
		return nil
	}
	keys := make([]string, len(order))
	for i, w := range order {
		keys[i] = storedString(w.p.key())
	}
	rows, err := b.Tx().Query(ctx, `SELECT `+recordColumns+` FROM jetproj.partitions
WHERE projection = $1 AND partition = ANY($2) ORDER BY partition FOR UPDATE`, r.def.Name(), keys)
	if err != nil {
		return fmt.Errorf("%w: read records applied inline: %w", errStore, err)
	}
	recs, err := scanRecords(rows)
	if err != nil {
		return fmt.Errorf("%w: read records applied inline: %w", errStore, err)
	}
	stored := make(map[string]Record, len(recs))
	for _, rec := range recs {
		stored[rec.Key] = rec
	}
	for _, w := range order {
		rec, ok := stored[w.p.key()]
		if !ok || rec.Revision == w.p.rev {
			continue
		}
		r.setRec(w.p, rec)
	}
	return nil
}

// appliedInline reports whether m was applied inline already: the
// partition's record has passed its position. Only for projections marked
// Inline, whose partitions are aggregates: positions grow with versions.
func (r *runner) appliedInline(rec Record, m projection.Meta) bool {
	return r.def.IsInline() && m.Position > 0 && m.Position <= rec.Position
}

// flushUnlessInlined runs the flush hook, unless every message of the
// partition's batch was applied inline: the inline run flushed already.
func (r *runner) flushUnlessInlined(ctx context.Context, pc *projectionspec.PartitionContext, all bool) error {
	if all {
		return nil
	}
	return r.safeFlush(ctx, pc)
}
