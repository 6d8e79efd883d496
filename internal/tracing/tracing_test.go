package tracing_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
	"github.com/jetproj/jetproj/pkg/projector"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// One trace shows append → read model → notification: the traceparent an
// application puts in an event's metadata continues through the feeder's
// message, the projector's span that applies the event, and the emitter's
// derived event, each span the child of the one before.
func TestTraceThroughThePipeline(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool := devtest.Pool(t)
	if _, err := eventstore.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	nc, _ := devtest.Connect(t, devtest.NATS(t))
	f, err := feeder.New(feeder.Config{}, feeder.Deps{Pool: pool, NC: nc})
	if err != nil {
		t.Fatal(err)
	}
	p, err := projector.New(nc, projector.Options{LeaseTTL: 2 * time.Second}, examples.WalletBalance(pool))
	if err != nil {
		t.Fatal(err)
	}
	e, err := emitter.New(emitter.Config{LeaseTTL: 2 * time.Second}, pool, nc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	derived := make(chan *nats.Msg, 4)
	sub, err := nc.ChanSubscribe(contract.ProjectionSubjects("wallet_balance"), derived)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe() //nolint:errcheck
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	start := func(name string, run func(context.Context) error) {
		wg.Go(func() {
			if err := run(sctx); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
	defer func() { stop(); wg.Wait() }()
	// The projector needs the feeder's stream to exist.
	start("feeder", f.Run)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 30*time.Second, func() error {
		_, err := js.Stream(ctx, contract.EventsStream)
		return err
	})
	start("projector", p.Run)
	start("emitter", e.Run)

	const traceID, appSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	if _, err := eventstore.Append(ctx, pool, "wallet", "w-1", eventstore.ExpectNoStream, eventstore.NewEvent{
		Type: "WalletOpened", Payload: map[string]string{"owner": "ann"},
		Metadata: map[string]string{"traceparent": "00-" + traceID + "-" + appSpan + "-01"}}); err != nil {
		t.Fatal(err)
	}
	var m *nats.Msg
	select {
	case m = <-derived:
	case <-ctx.Done():
		t.Fatal("no derived event")
	}
	if got := m.Header.Get(contract.HeaderTraceParent); !strings.Contains(got, traceID) {
		t.Fatalf("derived event traceparent %q, want trace %s", got, traceID)
	}
	// The spans, each the child of the one before, in the app's trace.
	parent := appSpan
	for _, name := range []string{"jetproj.feeder publish", "jetproj.projector apply wallet_balance", "jetproj.emitter publish wallet_balance"} {
		var found bool
		for _, s := range spans.Ended() {
			if s.Name() == name && s.SpanContext().TraceID().String() == traceID && s.Parent().SpanID().String() == parent {
				parent, found = s.SpanContext().SpanID().String(), true
				break
			}
		}
		if !found {
			var got []string
			for _, s := range spans.Ended() {
				got = append(got, s.Name()+" "+s.SpanContext().TraceID().String()+" parent "+s.Parent().SpanID().String())
			}
			t.Fatalf("no span %q in trace %s with parent %s; spans: %v", name, traceID, parent, got)
		}
	}
	if !strings.Contains(m.Header.Get(contract.HeaderTraceParent), parent) {
		t.Errorf("derived event traceparent %q does not name the emitter's span %s", m.Header.Get(contract.HeaderTraceParent), parent)
	}
}
