package opsserver

import (
	"context"
	"errors"
	"time"
)

// DefaultCheckTTL is how long a check's result is reused: a flood of probes
// costs one run of each check (one PostgreSQL ping …) per interval.
const DefaultCheckTTL = time.Second

// checkTimeout bounds one run of a check.
const checkTimeout = 2 * time.Second

// Cached returns fn with its result reused for ttl after each run: a caller
// within ttl of the last run gets that run's value and error, and
// concurrent callers share one run. A run is not cut short when the caller
// that started it goes away (its context's cancellation is ignored; its
// deadline, if any, still applies), so that one impatient caller cannot
// store a "context canceled" for everyone; a caller waiting for another's
// run gives up when its own context ends.
func Cached[T any](ttl time.Duration, fn func(context.Context) (T, error)) func(context.Context) (T, error) {
	c := &cache[T]{ttl: ttl, fn: fn, sem: make(chan struct{}, 1)}
	return c.get
}

type cache[T any] struct {
	ttl time.Duration
	fn  func(context.Context) (T, error)
	sem chan struct{} // held while running fn, and while reading the fields below

	at  time.Time
	val T
	err error
}

func (c *cache[T]) get(ctx context.Context) (T, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
	defer func() { <-c.sem }()
	if !c.at.IsZero() && time.Since(c.at) < c.ttl {
		return c.val, c.err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), checkTimeout)
	defer cancel()
	if dl, ok := ctx.Deadline(); ok {
		rctx, cancel = context.WithDeadline(rctx, dl)
		defer cancel()
	}
	c.val, c.err = c.fn(rctx)
	c.at = time.Now()
	return c.val, c.err
}

// cachedCheck is c run at most once per ttl.
func cachedCheck(ttl time.Duration, c Check) Check {
	if ttl <= 0 {
		return c
	}
	run := Cached(ttl, func(ctx context.Context) (struct{}, error) { return struct{}{}, c(ctx) })
	return func(ctx context.Context) error {
		_, err := run(ctx)
		return err
	}
}

// Public marks c's errors as safe to show on /healthz and /readyz (see
// PublicError). Use it only for checks whose messages jetproj writes
// itself; a check of a driver (PostgreSQL's Ping) stays private.
func Public(c Check) Check {
	return func(ctx context.Context) error {
		if err := c(ctx); err != nil {
			return &PublicError{Err: err}
		}
		return nil
	}
}

// shownMessage is what the endpoint says about a check's error: its
// message when it is public, a short classification otherwise.
func shownMessage(err error) string {
	var pe *PublicError
	switch {
	case errors.As(err, &pe):
		return pe.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return "failing: timed out (details in the service's log)"
	default:
		return "failing (details in the service's log)"
	}
}
