package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/jsretry"
)

// Log keys used by Run.
const (
	logKey      = "lease_key"
	logHolder   = "holder"
	logRevision = "revision"
	logHeldBy   = "held_by"
	logErr      = "err"
)

// maxReleaseTimeout bounds the release Run makes when it gives a lease up.
const maxReleaseTimeout = 5 * time.Second

// Options tune Run. The zero value is usable; defaults are fractions of the
// bucket TTL, read from the server when Run starts.
type Options struct {
	// RenewInterval is the time between renewals. Default TTL/3. A failed
	// renewal is retried every RenewInterval/4.
	RenewInterval time.Duration

	// SafetyMargin is how long before the lease could expire on the server
	// Run gives it up when no renewal has succeeded: work's context is
	// cancelled at the last successful renewal + TTL - SafetyMargin, so work
	// has SafetyMargin to stop before another holder can start. It also
	// absorbs clock-rate differences between this process and the server.
	// Default TTL/3, so a holder that cannot renew stops after 2/3 of the TTL.
	SafetyMargin time.Duration

	// PollInterval is how often a standby tries to acquire the key. A
	// released lease is seen at once through a watch; polling covers
	// expiries that leave no marker and a broken watch. Default TTL/4.
	PollInterval time.Duration

	// Logger receives state changes and errors. Default: discard.
	Logger *slog.Logger

	// OnState, if set, is called with true when the lease is acquired (before
	// work starts) and with false when it is lost or given up. It is called
	// from Run's goroutine and must not block.
	OnState func(held bool)
}

func (o Options) withDefaults(ttl time.Duration) Options {
	if o.RenewInterval == 0 {
		o.RenewInterval = ttl / 3
	}
	if o.SafetyMargin == 0 {
		o.SafetyMargin = ttl / 3
	}
	if o.PollInterval == 0 {
		o.PollInterval = ttl / 4
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func (o Options) validate(ttl time.Duration) error {
	var errs []error
	if o.RenewInterval < 0 {
		errs = append(errs, fmt.Errorf("RenewInterval %v is negative", o.RenewInterval))
	}
	if o.PollInterval < 0 {
		errs = append(errs, fmt.Errorf("PollInterval %v is negative", o.PollInterval))
	}
	if o.SafetyMargin < 0 || o.SafetyMargin >= ttl {
		errs = append(errs, fmt.Errorf("SafetyMargin %v is not between 0 and the bucket TTL %v", o.SafetyMargin, ttl))
	} else if o.RenewInterval >= ttl-o.SafetyMargin {
		errs = append(errs, fmt.Errorf("RenewInterval %v leaves no time to renew before giving up at TTL-SafetyMargin (%v)",
			o.RenewInterval, ttl-o.SafetyMargin))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lease: invalid options: %w", err)
	}
	return nil
}

// Run holds key in kv for holder and runs work while it does, until ctx is
// done or work returns on its own.
//
// Run waits as standby until the key is free (watching it, so a release is
// seen at once, and trying every PollInterval), acquires it, and calls work
// with the lease and a context that is cancelled when the lease is lost. It
// renews every RenewInterval; a renewal that finds the key taken over, or no
// successful renewal for TTL - SafetyMargin (NATS unreachable), cancels
// work's context with a cause matching ErrLost (see context.Cause). Errors
// other than a lost lease are retried. Run always waits for work to return
// before anything else, and work must return promptly once its context is
// done: another holder may start SafetyMargin after the cancellation.
//
// When work returns:
//   - after its lease was lost, with nil or an error matching
//     context.Canceled or ErrLost: Run goes back to standby;
//   - because ctx is done: Run releases the lease (with a short timeout, not
//     bound to ctx) and returns ctx.Err(), or work's error if that is not a
//     context error;
//   - on its own: Run releases the lease and returns work's error (nil if
//     work had nothing more to do).
//
// Passing JetStream trouble (jsretry.Transient: an election, a node
// restarting) is retried on this schedule and logged once per episode
// through ctx's jsretry.Retrier, whose readiness check fails meanwhile.
//
// Run reads the bucket TTL once at start (waiting through transient errors
// while ctx lasts) and returns an error if it cannot, or if opts are
// invalid. Run starts no goroutine that outlives it.
func Run(ctx context.Context, kv jetstream.KeyValue, key, holder string, opts Options, work func(ctx context.Context, l *Lease) error) error {
	if holder == "" {
		return errors.New("lease: run: empty holder")
	}
	if work == nil {
		return errors.New("lease: run: nil work")
	}
	ttl, err := BucketTTL(ctx, kv)
	if err != nil {
		return err
	}
	opts = opts.withDefaults(ttl)
	if err := opts.validate(ttl); err != nil {
		return err
	}
	r := &runner{
		kv:     kv,
		key:    key,
		holder: holder,
		ttl:    ttl,
		opts:   opts,
		work:   work,
		log:    opts.Logger.With(logKey, key, logHolder, holder),
		retry:  jsretry.FromContext(ctx),
		op:     "lease " + kv.Bucket() + "/" + key,
	}
	for {
		l, err := r.standby(ctx)
		if err != nil {
			return err
		}
		again, err := r.hold(ctx, l)
		if !again {
			return err
		}
	}
}

type runner struct {
	kv     jetstream.KeyValue
	key    string
	holder string
	ttl    time.Duration
	opts   Options
	work   func(context.Context, *Lease) error
	log    *slog.Logger
	retry  *jsretry.Retrier // logs passing trouble once per episode
	op     string
}

func (r *runner) setState(held bool) {
	if r.opts.OnState != nil {
		r.opts.OnState(held)
	}
}

// standby returns once it holds the lease, or with ctx's error.
func (r *runner) standby(ctx context.Context) (*Lease, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel() // also ends the watch subscription
	var w jetstream.KeyWatcher
	defer func() {
		if w != nil {
			_ = w.Stop()
		}
	}()
	poll := time.NewTimer(r.opts.PollInterval)
	defer poll.Stop()

	c, err := newClaim(r.holder)
	if err != nil {
		return nil, err
	}
	for {
		// Watch before trying, so that a release after a failed try is seen.
		if w == nil {
			if w, err = r.kv.Watch(wctx, r.key, jetstream.UpdatesOnly()); err != nil {
				w = nil
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				if !r.retry.Failed(r.op, err) {
					r.log.Warn("lease: cannot watch key, polling only", logErr, err)
				}
			}
		}
		l, err := c.acquire(ctx, r.kv, r.key)
		var held *HeldError
		switch {
		case err == nil:
			r.retry.Succeeded(r.op)
			return l, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.As(err, &held):
			r.retry.Succeeded(r.op)
			r.log.Debug("lease: held by another holder", logHeldBy, held.Holder, logRevision, held.Revision)
			if c, err = newClaim(r.holder); err != nil {
				return nil, err
			}
		case errors.Is(err, jetstream.ErrInvalidKey):
			return nil, err
		default:
			// The claim may or may not have been written: send the same
			// claim again so that we recognise it if it was. Passing
			// trouble (an election) is logged once per episode.
			if !r.retry.Failed(r.op, err) {
				r.log.Warn("lease: acquire failed", logErr, err)
			}
		}
		poll.Reset(r.opts.PollInterval)
		if err := r.waitFree(ctx, &w, poll.C); err != nil {
			return nil, err
		}
	}
}

// waitFree waits until the poll timer fires or the watch reports that the
// key was deleted, purged or expired.
func (r *runner) waitFree(ctx context.Context, w *jetstream.KeyWatcher, poll <-chan time.Time) error {
	var updates <-chan jetstream.KeyValueEntry
	if *w != nil {
		updates = (*w).Updates()
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-poll:
			return nil
		case e, ok := <-updates:
			if !ok {
				// The subscription ended; make a new one before the next try.
				*w, updates = nil, nil
				continue
			}
			if e != nil && e.Operation() != jetstream.KeyValuePut {
				return nil
			}
		}
	}
}

// hold runs work under l. It reports whether Run should go back to standby,
// or else the error Run returns.
func (r *runner) hold(ctx context.Context, l *Lease) (again bool, err error) {
	r.log.Info("lease: acquired", logRevision, l.Revision())
	r.setState(true)
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- r.work(wctx, l) }()

	werr, returned, lost := r.keep(ctx, l, done)
	if lost != nil {
		cancel(lost)
	}
	r.setState(false)
	if !returned {
		werr = <-done
	}

	switch {
	case lost != nil:
		if errors.Is(lost, errFenced) {
			// We gave up without hearing that someone else has the key: it
			// may still be ours on the server. Free it if we can.
			r.release(ctx, l)
		}
		r.log.Warn("lease: lost", logRevision, l.Revision(), logErr, lost)
		if ctx.Err() != nil {
			return false, ctxResult(ctx, werr)
		}
		if werr == nil || errors.Is(werr, context.Canceled) || errors.Is(werr, ErrLost) {
			return true, nil
		}
		return false, werr
	case ctx.Err() != nil:
		r.release(ctx, l)
		return false, ctxResult(ctx, werr)
	default:
		r.release(ctx, l)
		return false, werr
	}
}

var errFenced = errors.New("no renewal succeeded in time")

// keep renews l until work returns (returned is true), ctx is done, or the
// lease is lost (lost is non-nil).
func (r *runner) keep(ctx context.Context, l *Lease, done <-chan error) (werr error, returned bool, lost error) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	retry := false
	for {
		fence := l.RenewedAt().Add(r.ttl - r.opts.SafetyMargin)
		next := l.RenewedAt().Add(r.opts.RenewInterval)
		if retry {
			next = time.Now().Add(r.opts.RenewInterval / 4)
		}
		if next.After(fence) {
			next = fence
		}
		timer.Reset(time.Until(next))
		select {
		case werr := <-done:
			return werr, true, nil
		case <-ctx.Done():
			return nil, false, nil
		case <-timer.C:
		}
		now := time.Now()
		if !now.Before(fence) {
			return nil, false, fmt.Errorf("%w: key %q: %w since %v", ErrLost, r.key, errFenced,
				l.RenewedAt().Format(time.RFC3339Nano))
		}
		deadline := now.Add(r.opts.RenewInterval / 2)
		if deadline.After(fence) {
			deadline = fence
		}
		actx, acancel := context.WithDeadline(ctx, deadline)
		err := l.Renew(actx)
		acancel()
		switch {
		case err == nil:
			r.retry.Succeeded(r.op)
			retry = false
		case errors.Is(err, ErrLost):
			r.retry.Succeeded(r.op)
			return nil, false, err
		case ctx.Err() != nil:
			// Handled by the next select.
		default:
			if !r.retry.Failed(r.op, err) {
				r.log.Warn("lease: renew failed, retrying", logRevision, l.Revision(), logErr, err)
			}
			retry = true
		}
	}
}

// release gives the lease up with a short timeout of its own, so that it
// also runs when ctx is done.
func (r *runner) release(ctx context.Context, l *Lease) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(maxReleaseTimeout, r.ttl))
	defer cancel()
	if err := l.Release(rctx); err != nil {
		r.log.Warn("lease: release failed", logRevision, l.Revision(), logErr, err)
		return
	}
	r.log.Info("lease: released", logRevision, l.Revision())
}

// ctxResult is what Run returns when ctx is done: work's own error if it is
// not a context error, else ctx.Err().
func ctxResult(ctx context.Context, werr error) error {
	if werr != nil && !errors.Is(werr, context.Canceled) && !errors.Is(werr, context.DeadlineExceeded) {
		return werr
	}
	return ctx.Err()
}
