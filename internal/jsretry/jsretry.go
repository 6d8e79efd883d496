// Package jsretry waits out JetStream's passing trouble — a node
// restarting, a leader being elected, a stream or bucket briefly without a
// leader — so that no jetproj service exits for what a JetStream cluster
// does routinely.
//
// Transient tells that trouble (no responders, timeouts, "JetStream system
// temporarily unavailable" 10008, a stream or consumer offline, leadership
// changes …) from errors that will not pass by themselves (a stream
// configured differently, a bad name, a closed connection). A Retrier runs
// an operation again with a growing, jittered backoff while its error is
// transient; it logs once when an episode starts and once when it ends, and
// its Check (a readiness check) fails while any episode lasts.
//
// One Retrier serves a whole process. The services attach it to their
// context (NewContext) and every call site down the stack uses it through
// Do and Value, or through Failed and Succeeded where a loop already
// retries on its own schedule (lease renewals). A context without one gets
// a Retrier that logs nothing and reports to nobody, so library code works
// the same in tests.
package jsretry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream API error codes of passing cluster trouble (nats-server's
// server/jetstream_errors_generated.go; nats.go names only some of them).
const (
	codeClusterNoPeers        jetstream.ErrorCode = 10005 // no suitable peers for placement (nodes down)
	codeClusterNotActive      jetstream.ErrorCode = 10006 // JetStream not in clustered mode (yet)
	codeClusterNotAssigned    jetstream.ErrorCode = 10007 // cluster not assigned to this server
	codeClusterNotAvail       jetstream.ErrorCode = 10008 // JetStream system temporarily unavailable
	codeClusterNotLeader      jetstream.ErrorCode = 10009 // cluster can not handle request
	codeInsufficientResources jetstream.ErrorCode = 10023 // insufficient resources (nodes down)
	codeStreamOffline         jetstream.ErrorCode = 10118 // stream is offline
	codeConsumerOffline       jetstream.ErrorCode = 10119 // consumer is offline
)

var transientCodes = []jetstream.ErrorCode{
	codeClusterNoPeers, codeClusterNotActive, codeClusterNotAssigned, codeClusterNotAvail,
	codeClusterNotLeader, codeInsufficientResources, codeStreamOffline, codeConsumerOffline,
}

// transientErrs are the sentinels of trouble that passes by itself.
var transientErrs = []error{
	context.DeadlineExceeded, // a request's own deadline; Do checks the caller's first
	nats.ErrTimeout,
	nats.ErrNoResponders,
	nats.ErrDisconnected,
	nats.ErrConnectionReconnecting,
	nats.ErrStaleConnection,
	jetstream.ErrNoStreamResponse,
	jetstream.ErrAsyncPublishTimeout,
	jetstream.ErrTooManyStalledMsgs,
	jetstream.ErrConsumerLeadershipChanged,
	jetstream.ErrNoHeartbeat,
	jetstream.ErrServerShutdown,
	jetstream.ErrOrderedConsumerReset,
}

// Transient reports whether err is JetStream trouble that passes by itself:
// waiting and trying again is the cure. A closed connection is not (nats.go
// does not reconnect it), nor is anything the server says about the request
// itself (not found, exists, bad configuration).
func Transient(err error) bool {
	if err == nil || errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConnectionClosed) {
		return false
	}
	if s := (*settling)(nil); errors.As(err, &s) {
		return true
	}
	for _, s := range transientErrs {
		if errors.Is(err, s) {
			return true
		}
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		return slices.Contains(transientCodes, api.ErrorCode)
	}
	return false
}

// Default backoff: the first retry after about Min, doubling up to Max, each
// wait drawn between half and all of its nominal value.
const (
	DefaultMin = 100 * time.Millisecond
	DefaultMax = 5 * time.Second
)

// Backoff computes jittered, doubling waits. The zero value uses DefaultMin
// and DefaultMax. Not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	next     time.Duration
}

// Next returns the wait before the next attempt and doubles the one after.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = DefaultMin
	}
	if hi < lo {
		hi = max(DefaultMax, lo)
	}
	if b.next < lo {
		b.next = lo
	}
	d := b.next
	b.next = min(2*b.next, hi)
	return d/2 + rand.N(d/2+1)
}

// Reset starts the waits from Min again.
func (b *Backoff) Reset() { b.next = 0 }

// Log keys.
const (
	logOp       = "op"
	logError    = "error"
	logAfter    = "after"
	logAttempts = "attempts"
)

// episode is one operation failing with transient errors, from its first
// failure until it succeeds again.
type episode struct {
	since    time.Time
	attempts int
	err      error
}

// Retrier retries operations through passing JetStream trouble and keeps
// track of the episodes in progress. Create it with New; a nil *Retrier
// behaves as one that logs nothing.
type Retrier struct {
	log      *slog.Logger
	min, max time.Duration

	mu       sync.Mutex
	episodes map[string]*episode
}

// New returns a Retrier that logs to log (nil discards) and waits with the
// default backoff.
func New(log *slog.Logger) *Retrier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Retrier{log: log, min: DefaultMin, max: DefaultMax, episodes: map[string]*episode{}}
}

// WithBackoff sets the backoff bounds (tests use short ones) and returns r.
func (r *Retrier) WithBackoff(lo, hi time.Duration) *Retrier {
	r.min, r.max = lo, hi
	return r
}

type ctxKey struct{}

// fallback serves contexts that carry no Retrier.
var fallback = New(nil)

// NewContext returns ctx carrying r: Do, Value, Failed and Succeeded with
// that context (or one derived from it) use r.
func NewContext(ctx context.Context, r *Retrier) context.Context {
	return context.WithValue(ctx, ctxKey{}, r)
}

// FromContext returns the Retrier ctx carries, or one that logs nothing.
func FromContext(ctx context.Context) *Retrier {
	if r, ok := ctx.Value(ctxKey{}).(*Retrier); ok && r != nil {
		return r
	}
	return fallback
}

// Do runs fn with ctx's Retrier (see Retrier.Do).
func Do(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	return FromContext(ctx).Do(ctx, op, fn)
}

// Value runs fn until it returns a value or an error that is not transient,
// with ctx's Retrier (see Retrier.Do).
func Value[T any](ctx context.Context, op string, fn func(ctx context.Context) (T, error)) (T, error) {
	var v T
	err := Do(ctx, op, func(ctx context.Context) error {
		var err error
		v, err = fn(ctx)
		return err
	})
	return v, err
}

// SettleTime is how long ValueSettling takes "stream not found" for a
// cluster still settling.
const SettleTime = 10 * time.Second

// settling marks a not-found answer that ValueSettling retries.
type settling struct{ err error }

func (e *settling) Error() string { return e.err.Error() }
func (e *settling) Unwrap() error { return e.err }

// notFound reports whether err says a stream or bucket does not exist.
func notFound(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound)
}

// ValueSettling is Value for operations on streams and buckets that exist
// or are being created right now (by this process or another): on a
// cluster, a stream just created may be unknown for a moment to the server
// that answers (its group has no leader yet), and concurrent creates race.
// Besides transient errors it retries "stream not found" and "bucket not
// found" for up to SettleTime from the first attempt.
func ValueSettling[T any](ctx context.Context, op string, fn func(ctx context.Context) (T, error)) (T, error) {
	start := time.Now()
	v, err := Value(ctx, op, func(ctx context.Context) (T, error) {
		v, err := fn(ctx)
		if notFound(err) && time.Since(start) < SettleTime {
			return v, &settling{err}
		}
		return v, err
	})
	var s *settling
	if errors.As(err, &s) {
		err = s.err
	}
	return v, err
}

// Do runs fn until it succeeds, fails with an error that is not transient,
// or ctx ends; it returns fn's last error (nil on success). Between
// attempts it waits with a jittered backoff. op names the operation in logs
// and in Check ("create stream EVENTS"): the first transient failure of an
// op logs a warning, the success after it an info line with how long it
// took; the attempts between log at debug level.
func (r *Retrier) Do(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	if r == nil {
		r = fallback
	}
	b := Backoff{Min: r.min, Max: r.max}
	for {
		err := fn(ctx)
		switch {
		case err == nil:
			r.Succeeded(op)
			return nil
		case ctx.Err() != nil:
			return err
		case !Transient(err):
			r.forget(op)
			return err
		}
		r.Failed(op, err)
		t := time.NewTimer(b.Next())
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// Failed records a transient failure of op, for a loop that retries on its
// own schedule: the first one of an episode is logged as a warning, later
// ones at debug level, and Check fails until Succeeded(op). It reports
// whether err is transient; other errors are not recorded.
func (r *Retrier) Failed(op string, err error) bool {
	if r == nil {
		r = fallback
	}
	if !Transient(err) {
		return false
	}
	r.mu.Lock()
	e := r.episodes[op]
	first := e == nil
	if first {
		e = &episode{since: time.Now()}
		r.episodes[op] = e
	}
	e.attempts++
	e.err = err
	attempts := e.attempts
	r.mu.Unlock()
	if first {
		r.log.Warn("JetStream unavailable; retrying", logOp, op, logError, err)
	} else {
		r.log.Debug("JetStream still unavailable", logOp, op, logError, err, logAttempts, attempts)
	}
	return true
}

// Succeeded ends op's episode, if one is in progress, and logs how long it
// lasted.
func (r *Retrier) Succeeded(op string) {
	if r == nil {
		r = fallback
	}
	r.mu.Lock()
	e := r.episodes[op]
	delete(r.episodes, op)
	r.mu.Unlock()
	if e != nil {
		r.log.Info("JetStream available again", logOp, op, logAfter, time.Since(e.since).Round(time.Millisecond), logAttempts, e.attempts)
	}
}

func (r *Retrier) forget(op string) {
	r.mu.Lock()
	delete(r.episodes, op)
	r.mu.Unlock()
}

// Check fails while an episode is in progress, naming the oldest one: the
// readiness check of a service waiting for JetStream (opsserver.Check).
func (r *Retrier) Check(context.Context) error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var (
		oldest string
		e      *episode
	)
	for op, ep := range r.episodes {
		if e == nil || ep.since.Before(e.since) || ep.since.Equal(e.since) && op < oldest {
			oldest, e = op, ep
		}
	}
	if e == nil {
		return nil
	}
	msg := fmt.Sprintf("waiting for JetStream: %s failing for %v: %v", oldest, time.Since(e.since).Round(time.Second), e.err)
	if n := len(r.episodes); n > 1 {
		msg += fmt.Sprintf(" (and %d more)", n-1)
	}
	return errors.New(msg)
}

// Episodes returns the operations failing now, sorted.
func (r *Retrier) Episodes() []string {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.episodes))
	for op := range r.episodes {
		out = append(out, op)
	}
	slices.Sort(out)
	return out
}
