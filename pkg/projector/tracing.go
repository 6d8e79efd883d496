package projector

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetproj/jetproj/internal/tracing"
	"github.com/jetproj/jetproj/pkg/projection"
)

// traceBatch starts the span in which a partition applies msgs: the child
// of the last event's trace context, linked to the others' (see
// tracing.StartBatch). It returns the traceparent for the derived events,
// and costs a scan of msgs when no event carries a trace context.
func (r *runner) traceBatch(ctx context.Context, key string, msgs []projection.Meta) (context.Context, trace.Span, string) {
	traced := false
	for i := range msgs {
		if msgs[i].TraceParent != "" {
			traced = true
			break
		}
	}
	if !traced {
		return ctx, trace.SpanFromContext(context.Background()), ""
	}
	return tracing.StartBatch(ctx, len(msgs), func(i int) string { return msgs[i].TraceParent },
		"jetproj.projector apply "+r.def.Name(), trace.SpanKindConsumer,
		attribute.String("jetproj.projection", r.def.Name()), attribute.String("jetproj.partition", key), attribute.Int("jetproj.events", len(msgs)))
}
