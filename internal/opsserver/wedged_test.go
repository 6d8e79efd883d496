package opsserver_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/opsserver"
)

// A loop waiting for work is alive however long it waits; a step busy for
// longer than the bound is reported wedged, with what is busy.
func TestNotWedged(t *testing.T) {
	var b opsserver.Busy
	check := opsserver.NotWedged(50*time.Millisecond, func() (string, time.Time) { return "batch", b.Since() })
	if err := check(context.Background()); err != nil || !b.Since().IsZero() {
		t.Fatalf("idle: %v, since %v", err, b.Since())
	}
	b.Start()
	if err := check(context.Background()); err != nil {
		t.Fatalf("a step just started: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var err error
	for err == nil && time.Now().Before(deadline) {
		err = check(context.Background()) // busy-waits the 50ms bound, no sleep
	}
	if err == nil || !strings.Contains(err.Error(), "wedged: batch busy for") {
		t.Fatalf("a step busy past the bound: %v", err)
	}
	b.Stop()
	if err := check(context.Background()); err != nil {
		t.Fatalf("waiting again: %v", err)
	}
}

// /readyz shows reports beside the checks without changing its status;
// /healthz fails with the loop's wedged check.
func TestReportAndWedged(t *testing.T) {
	s := opsserver.New(opsserver.Config{Addr: "127.0.0.1:0", WedgedAfter: time.Second}, nil, nil)
	s.Report("lease", func() string { return "standby" })
	started := time.Now().Add(-time.Minute)
	s.Wedged(func() (string, time.Time) { return "feeding", started })
	ready := make(chan string, 1)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.Serve(context.Background(), func(context.Context) error { ready <- s.Addr(); <-stop; return nil })
	}()
	base := "http://" + <-ready
	if code, body := get(t, base+opsserver.ReadyPath); code != 200 || !strings.Contains(body, "lease: standby") {
		t.Errorf("readyz: %d %q", code, body)
	}
	if code, body := get(t, base+opsserver.HealthPath); code != 503 || !strings.Contains(body, "loop: wedged: feeding busy for 1m0s") {
		t.Errorf("healthz of a wedged loop: %d %q", code, body)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// OPS_WEDGED_AFTER defaults to 2m and must be at least 1s.
func TestConfig(t *testing.T) {
	cfg, err := config.Load[opsserver.Config](config.WithEnvironment(map[string]string{}))
	if err != nil || cfg.WedgedAfter != 2*time.Minute || cfg.Addr != ":8080" {
		t.Errorf("defaults: %+v %v", cfg, err)
	}
	_, err = config.Load[opsserver.Config](config.WithEnvironment(map[string]string{"OPS_WEDGED_AFTER": "10ms"}))
	if err == nil || !strings.Contains(err.Error(), "OPS_WEDGED_AFTER") {
		t.Errorf("10ms: %v", err)
	}
}
