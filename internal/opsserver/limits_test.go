package opsserver_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/opsserver"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// serve runs s until the test ends and returns its base URL.
func serve(t *testing.T, s *opsserver.Server) string {
	t.Helper()
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return "http://" + s.Addr()
}

// A flood of probes costs one run of each check per CheckTTL: the
// PostgreSQL ping behind /readyz and the queries behind /metrics are not
// run once per request.
func TestChecksRunOncePerInterval(t *testing.T) {
	limits := opsserver.DefaultLimits
	limits.CheckTTL = 300 * time.Millisecond
	s := opsserver.New(opsserver.Config{Addr: "127.0.0.1:0"}, nil, nil, opsserver.WithLimits(limits))
	var runs atomic.Int64
	release := make(chan struct{})
	s.Ready("postgres", func(ctx context.Context) error {
		runs.Add(1)
		select {
		case <-release: // held until every request arrived: they share the run
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	})
	base := serve(t, s)
	const n = 20 // below MaxConns: every request is served at once
	codes := make(chan int, n)
	for range n {
		go func() {
			resp, err := http.Get(base + opsserver.ReadyPath)
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	devtest.Eventually(t, 5*time.Second, func() error {
		if r := runs.Load(); r != 1 {
			return fmt.Errorf("%d runs", r)
		}
		return nil
	})
	close(release)
	for range n {
		if c := <-codes; c != http.StatusOK {
			t.Errorf("readyz: %d", c)
		}
	}
	if r := runs.Load(); r != 1 {
		t.Errorf("%d concurrent probes ran the check %d times, want once", n, r)
	}
	// Past the interval, the next probe runs it again.
	devtest.Eventually(t, 5*time.Second, func() error {
		if code, _ := get(t, base+opsserver.ReadyPath); code != http.StatusOK {
			return fmt.Errorf("readyz %d", code)
		}
		if r := runs.Load(); r < 2 {
			return fmt.Errorf("still %d runs", r)
		}
		return nil
	})
}

// Cached shares one run among concurrent callers, and a caller that goes
// away does not cut the run short for the others.
func TestCachedIgnoresCallerCancellation(t *testing.T) {
	var runs atomic.Int64
	f := opsserver.Cached(time.Hour, func(ctx context.Context) (int, error) {
		runs.Add(1)
		select {
		case <-time.After(50 * time.Millisecond):
			return 42, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if v, err := f(ctx); err != nil && !errors.Is(err, context.Canceled) || err == nil && v != 42 {
		t.Fatalf("cancelled caller: %d %v", v, err)
	}
	if v, err := f(context.Background()); err != nil || v != 42 || runs.Load() > 1 {
		t.Fatalf("got %d %v after %d runs, want the first run's 42", v, err, runs.Load())
	}
}

// A check's error may quote a DSN, a host or a user: the endpoint says
// "failing" and the log has the error, once per change rather than once
// per probe. Errors marked Public are shown as they are.
func TestPrivateErrorsAreNotShown(t *testing.T) {
	var logs devtest.LogBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	limits := opsserver.DefaultLimits
	limits.CheckTTL = 0
	s := opsserver.New(opsserver.Config{Addr: "127.0.0.1:0"}, nil, log, opsserver.WithLimits(limits))
	var healthy atomic.Bool
	secret := errors.New("failed to connect to `user=jetproj database=orders`: db.internal.example:5432 (10.1.2.3): " +
		"FATAL: password authentication failed (postgres://jetproj:s3cret@db.internal.example/orders)")
	s.Ready("postgres", func(context.Context) error {
		if healthy.Load() {
			return nil
		}
		return secret
	})
	s.Ready("timeout", func(ctx context.Context) error { return fmt.Errorf("ping 10.1.2.3: %w", context.DeadlineExceeded) })
	s.Ready("nats", opsserver.Public(func(context.Context) error { return errors.New("nats: RECONNECTING") }))
	base := serve(t, s)
	for range 3 {
		code, body := get(t, base+opsserver.ReadyPath)
		if code != http.StatusServiceUnavailable {
			t.Errorf("readyz: %d", code)
		}
		for _, leak := range []string{"s3cret", "db.internal", "10.1.2.3", "jetproj", "orders", "FATAL"} {
			if strings.Contains(body, leak) {
				t.Errorf("readyz shows %q:\n%s", leak, body)
			}
		}
		for _, want := range []string{
			"postgres: failing (details in the service's log)\n",
			"timeout: failing: timed out (details in the service's log)\n",
			"nats: nats: RECONNECTING\n",
		} {
			if !strings.Contains(body, want) {
				t.Errorf("readyz lacks %q:\n%s", want, body)
			}
		}
	}
	out := logs.String()
	if n := strings.Count(out, "password authentication failed"); n != 1 {
		t.Errorf("the error is logged %d times, want once:\n%s", n, out)
	}
	if strings.Contains(out, "RECONNECTING") {
		t.Errorf("a public error is logged too:\n%s", out)
	}
	healthy.Store(true)
	if _, body := get(t, base+opsserver.ReadyPath); !strings.Contains(body, "postgres: ok") {
		t.Errorf("readyz after recovery:\n%s", body)
	}
	if !strings.Contains(logs.String(), "check ok again") {
		t.Errorf("recovery not logged:\n%s", logs.String())
	}
}

// readUntilClosed reads c until the server closes it and fails the test
// when that takes longer than within.
func readUntilClosed(t *testing.T, c net.Conn, within time.Duration, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("%s: still open after %v", what, within)
	}
}

// A client that sends its request slowly, or keeps an idle keep-alive
// connection open, is disconnected.
func TestSlowAndIdleClientsAreDisconnected(t *testing.T) {
	limits := opsserver.DefaultLimits
	limits.ReadHeaderTimeout = 200 * time.Millisecond
	limits.ReadTimeout = 400 * time.Millisecond
	limits.IdleTimeout = 200 * time.Millisecond
	s := opsserver.New(opsserver.Config{Addr: "127.0.0.1:0"}, nil, nil, opsserver.WithLimits(limits))
	s.Live("running", func(context.Context) error { return nil })
	base := serve(t, s)
	addr := strings.TrimPrefix(base, "http://")

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "GET /healthz HTTP/1.1\r\nHost: x\r\n"); err != nil { // never finished
		t.Fatal(err)
	}
	readUntilClosed(t, slow, 3*time.Second, "a request header never finished")

	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(idle), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("healthz: %d, close %v", resp.StatusCode, resp.Close)
	}
	readUntilClosed(t, idle, 3*time.Second, "an idle keep-alive connection")
}

// Connections past MaxConns wait until one ends: a client holding
// connections open cannot make the service serve more at once.
func TestConnectionsAreCapped(t *testing.T) {
	limits := opsserver.DefaultLimits
	limits.MaxConns = 2
	s := opsserver.New(opsserver.Config{Addr: "127.0.0.1:0"}, nil, nil, opsserver.WithLimits(limits))
	s.Live("running", func(context.Context) error { return nil })
	base := serve(t, s)
	addr := strings.TrimPrefix(base, "http://")
	// Two keep-alive connections, each served once: both hold a slot.
	var held []net.Conn
	for range limits.MaxConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		held = append(held, c)
	}
	client := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	if resp, err := client.Get(base + opsserver.HealthPath); err == nil {
		resp.Body.Close()
		t.Fatalf("a third connection was served while %d were held: %d", limits.MaxConns, resp.StatusCode)
	}
	held[0].Close()
	devtest.Eventually(t, 5*time.Second, func() error {
		resp, err := client.Get(base + opsserver.HealthPath)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
}
