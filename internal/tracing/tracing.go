// Package tracing carries W3C trace context through jetproj: an event
// appended with a traceparent in its metadata is published by the feeder in
// a span of that trace, applied by the projector in a child span, and its
// derived events are published by the emitter in a further child, so one
// trace shows append → read model → notification. Setup exports the spans
// over OTLP when the standard OTEL_EXPORTER_OTLP_* variables are set;
// without them spans are not recorded and the traceparent passes through
// unchanged.
package tracing

import (
	"context"
	"errors"
	"log/slog"
	"os"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetproj/jetproj/pkg/contract"
)

// Setup installs the W3C propagator and, when OTEL_EXPORTER_OTLP_ENDPOINT
// or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, a tracer provider exporting
// over OTLP/HTTP as service. shutdown flushes the spans.
func Setup(ctx context.Context, service string, log *slog.Logger) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(propagation.TraceContext{})
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, err
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(service)))
	if err != nil && !errors.Is(err, resource.ErrSchemaURLConflict) {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	if log != nil {
		log.Info("tracing exported over OTLP")
	}
	return tp.Shutdown, nil
}

func tracer() trace.Tracer { return otel.Tracer("github.com/jetproj/jetproj") }

// Start starts a span named name as a child of traceparent, when that is a
// valid W3C traceparent; otherwise it returns ctx and a span that records
// nothing, and an empty traceparent. The returned traceparent is the one to
// put on the messages the span produces: the span's own when it records,
// the parent's when no tracer provider is installed.
func Start(ctx context.Context, traceparent, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span, string) {
	if traceparent == "" {
		return ctx, trace.SpanFromContext(context.Background()), ""
	}
	ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{contract.HeaderTraceParent: traceparent})
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, trace.SpanFromContext(context.Background()), ""
	}
	ctx, span := tracer().Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	return ctx, span, carrier[contract.HeaderTraceParent]
}

// StartBatch starts the span of a batch of n events, traceparent(i) giving
// the i-th event's trace context: the span is the child of the last event
// that has one (the one the batch's derived events answer) and links to the
// other events' contexts. Without any, it returns ctx, a span that records
// nothing and an empty traceparent.
func StartBatch(ctx context.Context, n int, traceparent func(i int) string, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span, string) {
	last := -1
	for i := n - 1; i >= 0; i-- {
		if traceparent(i) != "" {
			last = i
			break
		}
	}
	if last < 0 {
		return ctx, trace.SpanFromContext(context.Background()), ""
	}
	ctx, span, tp := Start(ctx, traceparent(last), name, kind, attrs...)
	if span.IsRecording() {
		for i := range last {
			if sc := spanContext(traceparent(i)); sc.IsValid() {
				span.AddLink(trace.Link{SpanContext: sc})
			}
		}
	}
	return ctx, span, tp
}

// spanContext parses a W3C traceparent; the result is invalid when it is.
func spanContext(traceparent string) trace.SpanContext {
	if traceparent == "" {
		return trace.SpanContext{}
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{contract.HeaderTraceParent: traceparent})
	return trace.SpanContextFromContext(ctx)
}
