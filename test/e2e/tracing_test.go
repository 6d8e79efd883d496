package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
)

// otlpReceiver collects the bodies of OTLP/HTTP trace exports.
type otlpReceiver struct {
	mu     sync.Mutex
	bodies [][]byte
}

func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if req.URL.Path == "/v1/traces" {
		r.mu.Lock()
		r.bodies = append(r.bodies, b)
		r.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(http.StatusOK)
}

// exported reports whether one export holds both needles (an export is one
// service's batch of spans, protobuf-encoded: strings and trace ids appear
// as their bytes).
func (r *otlpReceiver) exported(needles ...[]byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bodies {
		all := true
		for _, n := range needles {
			all = all && bytes.Contains(b, n)
		}
		if all {
			return true
		}
	}
	return false
}

// TestTraceExportedOverOTLP: the three services as processes, with
// OTEL_EXPORTER_OTLP_ENDPOINT set, export their spans of an event appended
// with a traceparent to that endpoint, each as its own service, in the
// application's trace; the derived event carries the trace on.
func TestTraceExportedOverOTLP(t *testing.T) {
	recv := &otlpReceiver{}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	otel := func(env map[string]string) map[string]string {
		env["OTEL_EXPORTER_OTLP_ENDPOINT"] = srv.URL
		env["OTEL_BSP_SCHEDULE_DELAY"] = "100" // ms: export soon, not every 5s
		return env
	}
	startFeeder(t, "feeder", otel(feederEnv(dbURL, ns.URL(), "f")))
	startProjector(t, "projector", otel(pipelineEnv(dbURL, ns.URL(), "p1", examples.WalletBalanceName)))
	startEmitter(t, "emitter", otel(emitterEnv(dbURL, ns.URL(), "e1")))

	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	derived := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(contract.ProjectionSubjects("wallet_balance"), derived)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe() //nolint:errcheck
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	const traceID = "0af7651916cd43dd8448eb211c80319c"
	if _, err := eventstore.Append(context.Background(), pool, "wallet", "w-traced", eventstore.ExpectNoStream, eventstore.NewEvent{
		Type: "WalletOpened", Payload: examples.WalletOpened{Owner: "ann"},
		Metadata: map[string]string{"traceparent": "00-" + traceID + "-b7ad6b7169203331-01"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-derived:
		if tp := m.Header.Get("traceparent"); !strings.Contains(tp, traceID) {
			t.Errorf("derived event traceparent %q, want trace %s", tp, traceID)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no derived event")
	}
	id, err := hex.DecodeString(traceID)
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []struct{ name, span string }{
		{"jetproj-feeder", "jetproj.feeder publish"},
		{"jetproj-projector", "jetproj.projector apply wallet_balance"},
		{"jetproj-emitter", "jetproj.emitter publish wallet_balance"},
	} {
		devtest.Eventually(t, 30*time.Second, func() error {
			if !recv.exported([]byte(svc.name), []byte(svc.span), id) {
				return fmt.Errorf("no export from %s with span %q in trace %s", svc.name, svc.span, traceID)
			}
			return nil
		})
	}
}
