package lease_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/lease"
)

const runKey = "feeder.main"

// tracker counts how many contenders run work at the same time.
type tracker struct {
	running atomic.Int32
	most    atomic.Int32
}

func (tr *tracker) enter() {
	n := tr.running.Add(1)
	for {
		m := tr.most.Load()
		if n <= m || tr.most.CompareAndSwap(m, n) {
			return
		}
	}
}

func (tr *tracker) check(t *testing.T) {
	t.Helper()
	if m := tr.most.Load(); m > 1 {
		t.Fatalf("%d contenders ran work at the same time", m)
	}
}

type contender struct {
	name    string
	cancel  context.CancelFunc
	done    chan struct{} // closed when Run has returned, with err
	err     error
	started chan *lease.Lease // work started
	stopped chan error        // work's context ended, with its cause
	states  chan bool         // OnState calls
	held    chan struct{}     // a standby attempt found the key held
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// standbyHandler signals each time Run logs that the key is held by
// another holder, that is after a failed attempt as standby.
type standbyHandler struct {
	slog.Handler
	held chan struct{}
}

func (h standbyHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "held_by" {
			select {
			case h.held <- struct{}{}:
			default:
			}
			return false
		}
		return true
	})
	return h.Handler.Handle(ctx, r)
}

func (h standbyHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return standbyHandler{Handler: h.Handler.WithAttrs(as), held: h.held}
}

// start runs a contender for runKey whose work runs until its context ends.
func start(t *testing.T, kv jetstream.KeyValue, name string, tr *tracker) *contender {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &contender{
		name:    name,
		cancel:  cancel,
		done:    make(chan struct{}),
		started: make(chan *lease.Lease, 16),
		stopped: make(chan error, 16),
		states:  make(chan bool, 16),
	}
	c.held = make(chan struct{}, 1)
	opts := lease.Options{
		Logger:  slog.New(standbyHandler{Handler: logger(t).Handler(), held: c.held}).With("contender", name),
		OnState: func(held bool) { c.states <- held },
	}
	go func() {
		defer close(c.done)
		c.err = lease.Run(ctx, kv, runKey, name, opts, func(ctx context.Context, l *lease.Lease) error {
			tr.enter()
			c.started <- l
			<-ctx.Done()
			tr.running.Add(-1)
			c.stopped <- context.Cause(ctx)
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			t.Errorf("Run of %s did not return after cancel", name)
		}
	})
	return c
}

// wait waits for Run to return and returns its error.
func (c *contender) wait(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case <-c.done:
		return c.err
	case <-time.After(within):
		t.Fatalf("Run of %s did not return within %v", c.name, within)
		return nil
	}
}

func recv[T any](t *testing.T, ch <-chan T, within time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(within):
		t.Fatalf("no %s within %v", what, within)
		panic("unreachable")
	}
}

func TestRunHandsOverOnRelease(t *testing.T) {
	t.Parallel()
	b := setup(t, 30*time.Second)
	tr := &tracker{}

	a := start(t, b.kvFor(t), "a", tr)
	la := recv(t, a.started, 10*time.Second, "start of a")
	if held := recv(t, a.states, time.Second, "state of a"); !held {
		t.Fatal("a: OnState(false) before OnState(true)")
	}
	s := start(t, b.kvFor(t), "s", tr)

	// s is standby: it tried, found the key held, and waits.
	recv(t, s.held, 5*time.Second, "standby attempt of s")
	select {
	case <-s.started:
		t.Fatal("standby started while a holds the lease")
	default:
	}

	// Cancelling a releases the lease; the standby sees the release through
	// its watch, long before the 30s TTL or the 7.5s poll.
	cancelled := time.Now()
	a.cancel()
	if err := a.wait(t, 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run of a returned %v, want context.Canceled", err)
	}
	if held := recv(t, a.states, time.Second, "state of a"); held {
		t.Fatal("a: OnState(true) after cancel, want false")
	}
	ls := recv(t, s.started, 5*time.Second, "takeover by s")
	t.Logf("takeover after %v", time.Since(cancelled))
	if ls.Revision() <= la.Revision() {
		t.Fatalf("fencing token went back: s %d, a %d", ls.Revision(), la.Revision())
	}
	tr.check(t)
}

func TestRunStandbyTakesOverFromDeadHolder(t *testing.T) {
	t.Parallel()
	const ttl = time.Second
	b := setup(t, ttl)
	tr := &tracker{}

	ncA, jsA := devtest.Connect(t, b.srv)
	kvA, err := jsA.KeyValue(t.Context(), bucket)
	if err != nil {
		t.Fatalf("open bucket: %v", err)
	}
	a := start(t, kvA, "a", tr)
	la := recv(t, a.started, 10*time.Second, "start of a")
	s := start(t, b.kvFor(t), "s", tr)

	// a keeps the lease while it can renew it: more than a TTL passes.
	devtest.Eventually(t, 10*time.Second, func() error {
		if time.Since(la.RenewedAt()) > ttl {
			t.Fatalf("a has not renewed for %v", time.Since(la.RenewedAt()))
		}
		if la.Revision() < 5 {
			return errors.New("a has renewed fewer than 4 times")
		}
		return nil
	})
	select {
	case <-s.started:
		t.Fatal("standby started while a renews the lease")
	default:
	}

	// a's connection dies: it can neither renew nor release. It must stop
	// its work before the lease expires; s takes over after the expiry.
	ncA.Close()
	cause := recv(t, a.stopped, 5*time.Second, "self-fencing of a")
	fenced := time.Now()
	if !errors.Is(cause, lease.ErrLost) {
		t.Fatalf("a's work ended with cause %v, want ErrLost", cause)
	}
	if fenced.After(la.RenewedAt().Add(ttl)) {
		t.Fatalf("a fenced itself %v after its last renewal, after the TTL", fenced.Sub(la.RenewedAt()))
	}
	ls := recv(t, s.started, 5*time.Second, "takeover by s")
	if since := time.Since(la.RenewedAt()); since < ttl {
		t.Fatalf("s took over %v after a's last renewal, before the TTL %v", since, ttl)
	}
	if ls.Revision() <= la.Revision() {
		t.Fatalf("fencing token went back: s %d, a %d", ls.Revision(), la.Revision())
	}
	tr.check(t)
}

func TestRunKeepsLeaseAcrossNATSRestart(t *testing.T) {
	t.Parallel()
	b := setup(t, 3*time.Second)
	tr := &tracker{}

	a := start(t, b.kvFor(t), "a", tr)
	la := recv(t, a.started, 10*time.Second, "start of a")

	if err := b.srv.Restart(t.Context()); err != nil {
		t.Fatalf("restart nats: %v", err)
	}
	restarted := la.Revision()
	devtest.Eventually(t, 10*time.Second, func() error {
		select {
		case cause := <-a.stopped:
			t.Fatalf("a lost its lease across a NATS restart: %v", cause)
		default:
		}
		if la.Revision() < restarted+2 {
			return errors.New("no renewal since the restart")
		}
		return nil
	})
	tr.check(t)
}

func TestRunWorkError(t *testing.T) {
	t.Parallel()
	b := setup(t, 30*time.Second)
	ctx := t.Context()
	boom := errors.New("boom")

	var revision uint64
	err := lease.Run(ctx, b.kv, runKey, "a", lease.Options{Logger: logger(t)}, func(_ context.Context, l *lease.Lease) error {
		revision = l.Revision()
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Run returned %v, want %v", err, boom)
	}
	// Released: the key is free at once.
	l, err := lease.Acquire(ctx, b.kv, runKey, "b")
	if err != nil {
		t.Fatalf("acquire after work error: %v", err)
	}
	if l.Revision() <= revision {
		t.Fatalf("fencing token went back: %d after %d", l.Revision(), revision)
	}

	// Work that returns nil ends Run with nil, and releases too.
	if err := l.Release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	err = lease.Run(ctx, b.kv, runKey, "a", lease.Options{}, func(context.Context, *lease.Lease) error { return nil })
	if err != nil {
		t.Fatalf("Run with finished work returned %v", err)
	}
	if _, err := lease.Acquire(ctx, b.kv, runKey, "b"); err != nil {
		t.Fatalf("acquire after finished work: %v", err)
	}
}

func TestRunInvalidOptions(t *testing.T) {
	t.Parallel()
	b := setup(t, 3*time.Second)
	err := lease.Run(t.Context(), b.kv, runKey, "a", lease.Options{RenewInterval: 5 * time.Second, PollInterval: -1},
		func(context.Context, *lease.Lease) error {
			t.Error("work ran with invalid options")
			return nil
		})
	if err == nil {
		t.Fatal("Run with invalid options: got nil error")
	}
	t.Log(err)

	err = lease.Run(t.Context(), b.kv, "bad key", "a", lease.Options{}, func(context.Context, *lease.Lease) error {
		t.Error("work ran with an invalid key")
		return nil
	})
	if !errors.Is(err, jetstream.ErrInvalidKey) {
		t.Fatalf("Run with an invalid key: got %v, want ErrInvalidKey", err)
	}
}
