package tracing_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/jetproj/jetproj/internal/tracing"
)

// A batch's span is the child of the last event that has a trace context
// and links to the other events' contexts; without any it records nothing.
func TestStartBatch(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	tps := []string{
		"00-11111111111111111111111111111111-1111111111111111-01",
		"",
		"00-22222222222222222222222222222222-2222222222222222-01",
		"",
	}
	_, span, child := tracing.StartBatch(context.Background(), len(tps), func(i int) string { return tps[i] }, "batch", trace.SpanKindConsumer)
	span.End()
	got := spans.Ended()
	if len(got) != 1 {
		t.Fatalf("%d spans, want 1", len(got))
	}
	s := got[0]
	if p := s.Parent(); p.TraceID().String() != "22222222222222222222222222222222" || p.SpanID().String() != "2222222222222222" {
		t.Errorf("parent %v, want the last traced event", p)
	}
	if want := "00-22222222222222222222222222222222-" + s.SpanContext().SpanID().String() + "-01"; child != want {
		t.Errorf("traceparent %q, want %q", child, want)
	}
	if l := s.Links(); len(l) != 1 || l[0].SpanContext.TraceID().String() != "11111111111111111111111111111111" {
		t.Errorf("links %v, want the first event's context", l)
	}

	_, span, child = tracing.StartBatch(context.Background(), 2, func(int) string { return "" }, "untraced", trace.SpanKindConsumer)
	span.End()
	if span.IsRecording() || child != "" || len(spans.Ended()) != 1 {
		t.Errorf("untraced batch: recording %v, traceparent %q, %d spans", span.IsRecording(), child, len(spans.Ended()))
	}
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, Setup exports the spans over
// OTLP/HTTP to it (flushed by shutdown); without it, it records nothing and
// a traceparent passes through unchanged.
func TestSetupExportsOverOTLP(t *testing.T) {
	posted := make(chan string, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if len(b) > 0 {
			posted <- r.URL.Path
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const parent = "00-33333333333333333333333333333333-3333333333333333-01"

	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	shutdown, err := tracing.Setup(ctx, "jetproj-test", nil)
	if err != nil {
		t.Fatal(err)
	}
	otel.SetTracerProvider(noop.NewTracerProvider())
	_, span, tp := tracing.Start(ctx, parent, "off", trace.SpanKindProducer)
	span.End()
	if tp != parent || span.IsRecording() {
		t.Errorf("without an endpoint: traceparent %q (want %q unchanged), recording %v", tp, parent, span.IsRecording())
	}
	_ = shutdown(ctx)

	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	shutdown, err = tracing.Setup(ctx, "jetproj-test", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, span, tp = tracing.Start(ctx, parent, "exported", trace.SpanKindProducer)
	if !span.IsRecording() || tp == parent {
		t.Errorf("with an endpoint: recording %v, traceparent %q (want a child of %q)", span.IsRecording(), tp, parent)
	}
	span.End()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case path := <-posted:
		if path != "/v1/traces" {
			t.Errorf("exported to %s, want /v1/traces", path)
		}
	case <-ctx.Done():
		t.Fatal("no span exported to the OTLP endpoint")
	}
}
