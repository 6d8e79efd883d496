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
)

// Header is the W3C trace context header on jetproj's messages.
const Header = "traceparent"

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
	ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{Header: traceparent})
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, trace.SpanFromContext(context.Background()), ""
	}
	ctx, span := tracer().Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	return ctx, span, carrier[Header]
}
