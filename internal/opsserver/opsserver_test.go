package opsserver_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/opsserver"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The endpoint answers from the checks and the registry while the service
// runs, and stops with it.
func TestServe(t *testing.T) {
	reg := opsserver.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "jetproj_test_total", Help: "A test counter."})
	reg.MustRegister(c)
	c.Add(3)
	// Results are not reused here: the test changes them between requests.
	limits := opsserver.DefaultLimits
	limits.CheckTTL = 0
	s := opsserver.New(opsserver.Config{Addr: "127.0.0.1:0"}, reg, nil, opsserver.WithLimits(limits))
	var connected atomic.Bool
	s.Ready("nats", opsserver.Public(func(context.Context) error {
		if !connected.Load() {
			return errors.New("nats: RECONNECTING")
		}
		return nil
	}))
	stop := make(chan struct{})
	served := make(chan error, 1)
	listening := make(chan string, 1)
	go func() {
		served <- s.Serve(context.Background(), func(ctx context.Context) error {
			listening <- s.Addr()
			<-stop
			return nil
		})
	}()
	base := "http://" + <-listening
	if code, body := get(t, base+opsserver.HealthPath); code != 200 || !strings.Contains(body, "running: ok") {
		t.Errorf("healthz: %d %q", code, body)
	}
	if code, body := get(t, base+opsserver.ReadyPath); code != 503 || !strings.Contains(body, "nats: nats: RECONNECTING") {
		t.Errorf("readyz with a failing check: %d %q", code, body)
	}
	connected.Store(true)
	if code, body := get(t, base+opsserver.ReadyPath); code != 200 || !strings.Contains(body, "nats: ok") {
		t.Errorf("readyz: %d %q", code, body)
	}
	if code, body := get(t, base+opsserver.MetricsPath); code != 200 || !strings.Contains(body, "jetproj_test_total 3") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("metrics: %d\n%s", code, body)
	}
	close(stop)
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := http.Get(base + opsserver.HealthPath); err == nil {
		t.Error("the endpoint outlived the service")
	}
}

// An address that cannot be bound fails before the service starts; "off"
// serves nothing.
func TestServeAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ran := false
	err = opsserver.New(opsserver.Config{Addr: ln.Addr().String()}, nil, nil).Serve(context.Background(), func(context.Context) error {
		ran = true
		return nil
	})
	if err == nil || ran || !strings.Contains(err.Error(), "OPS_ADDR") {
		t.Errorf("taken port: err %v, service ran %v", err, ran)
	}
	s := opsserver.New(opsserver.Config{Addr: opsserver.Disabled}, nil, nil)
	if err := s.Serve(context.Background(), func(context.Context) error { ran = true; return nil }); err != nil || !ran || s.Addr() != "" {
		t.Errorf("off: err %v, ran %v, addr %q", err, ran, s.Addr())
	}
}
