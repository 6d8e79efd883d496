package lease

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// record is the value of a lease entry. ID is unique per acquisition, so
// that a holder recognises its own write after losing the reply to it.
type record struct {
	Holder     string    `json:"holder"`
	ID         string    `json:"id"`
	AcquiredAt time.Time `json:"acquired_at"`
}

// claim is one attempt to acquire a key, possibly sent several times. Run
// resends the same claim after an error that leaves the outcome unknown, and
// so can adopt a lease whose creation it did not hear about.
type claim struct {
	holder    string
	value     []byte
	firstSent time.Time // when the claim was first sent; zero before
}

func newClaim(holder string) (*claim, error) {
	value, err := json.Marshal(record{Holder: holder, ID: rand.Text(), AcquiredAt: time.Now().UTC()})
	if err != nil {
		return nil, fmt.Errorf("lease: encode record: %w", err)
	}
	return &claim{holder: holder, value: value}, nil
}

// Acquire takes the lease on key in kv for holder, a name identifying this
// process (host name, pod name …) that others see in HeldError.
//
// It costs one request when the key is free and three when it is held
// (create, then read the current holder). If a live lease exists, the error
// is a *HeldError matching ErrHeld. A key that was released, or whose lease
// expired (aged out of the bucket), is free.
func Acquire(ctx context.Context, kv jetstream.KeyValue, key, holder string) (*Lease, error) {
	if holder == "" {
		return nil, errors.New("lease: acquire: empty holder")
	}
	c, err := newClaim(holder)
	if err != nil {
		return nil, err
	}
	return c.acquire(ctx, kv, key)
}

func (c *claim) acquire(ctx context.Context, kv jetstream.KeyValue, key string) (*Lease, error) {
	// A free key can be taken by somebody else between our create and our
	// read; try again a few times before reporting it as held.
	for range 3 {
		sent := time.Now()
		if c.firstSent.IsZero() {
			c.firstSent = sent
		}
		rev, err := kv.Create(ctx, key, c.value)
		if err == nil {
			return c.lease(kv, key, rev, sent), nil
		}
		if !isConflict(err) {
			return nil, fmt.Errorf("lease: acquire %q: %w", key, err)
		}
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released or expired meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("lease: acquire %q: read holder: %w", key, err)
		}
		if bytes.Equal(e.Value(), c.value) {
			// An earlier send of this claim created the entry and its reply
			// was lost. The entry was written after the first send, so the
			// lease lives at least until firstSent plus the TTL.
			return c.lease(kv, key, e.Revision(), c.firstSent), nil
		}
		return nil, heldError(key, e)
	}
	return nil, &HeldError{Key: key}
}

func (c *claim) lease(kv jetstream.KeyValue, key string, rev uint64, renewedAt time.Time) *Lease {
	return &Lease{kv: kv, key: key, holder: c.holder, value: c.value, rev: rev, renewedAt: renewedAt}
}

func heldError(key string, e jetstream.KeyValueEntry) *HeldError {
	he := &HeldError{Key: key, Revision: e.Revision()}
	var r record
	if json.Unmarshal(e.Value(), &r) == nil {
		he.Holder, he.AcquiredAt = r.Holder, r.AcquiredAt
	}
	return he
}

// isConflict reports whether err is the server refusing a write because the
// key's last revision is not the expected one. Depending on the path and the
// replica count, nats.go reports this as ErrKeyExists, ErrKeyRevisionMismatch
// or a bare API error with code 10071 or 10164.
func isConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Lease is a held lease. It has no goroutines or timers of its own: renew it
// more often than the bucket TTL, and stop relying on it once RenewedAt plus
// the TTL (minus a margin for clock drift) has passed without a successful
// Renew.
//
// Key, Holder, Revision and RenewedAt may be called at any time from any
// goroutine; Renew and Release are serialised.
type Lease struct {
	kv     jetstream.KeyValue
	key    string
	holder string
	value  []byte

	op sync.Mutex // serialises Renew and Release

	mu        sync.Mutex
	rev       uint64
	renewedAt time.Time
	end       error // non-nil once lost or released
}

// Key is the leased key.
func (l *Lease) Key() string { return l.key }

// Holder is the holder name given to Acquire.
func (l *Lease) Holder() string { return l.holder }

// Revision is the KV revision of the lease entry, the fencing token. It grows
// with every successful Renew.
func (l *Lease) Revision() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rev
}

// RenewedAt is the local time at which the request behind the current
// revision (Acquire or the last successful Renew) was sent. The server wrote
// the entry later, so it keeps the lease at least until RenewedAt plus the
// bucket TTL.
func (l *Lease) RenewedAt() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.renewedAt
}

func (l *Lease) current() (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rev, l.end
}

func (l *Lease) lost(detail string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.end = fmt.Errorf("%w: key %q: %s", ErrLost, l.key, detail)
	return l.end
}

// Renew extends the lease by rewriting its entry if the entry is still the
// one we wrote last (one request). On success the revision grows and
// RenewedAt moves on. If somebody else holds the key now, or it expired, it
// returns an error matching ErrLost. Other errors (timeouts, a broken
// connection) leave the lease as it was; retry until it would expire.
func (l *Lease) Renew(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	rev, end := l.current()
	if end != nil {
		return end
	}
	return l.withRevision(ctx, rev, func(rev uint64) error {
		sent := time.Now()
		newRev, err := l.kv.Update(ctx, l.key, l.value, rev)
		if err == nil {
			l.mu.Lock()
			l.rev, l.renewedAt = newRev, sent
			l.mu.Unlock()
		}
		return err
	})
}

// Release deletes the lease entry if it is still ours, so that a standby can
// take the key over at once. A lease that was lost is left alone (the error
// matches ErrLost). Releasing twice returns nil.
func (l *Lease) Release(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	rev, end := l.current()
	if end != nil {
		if errors.Is(end, errReleased) {
			return nil
		}
		return end
	}
	err := l.withRevision(ctx, rev, func(rev uint64) error {
		return l.kv.Delete(ctx, l.key, jetstream.LastRevision(rev))
	})
	if err == nil {
		l.mu.Lock()
		l.end = fmt.Errorf("%w: key %q: %w", ErrLost, l.key, errReleased)
		l.mu.Unlock()
	}
	return err
}

var errReleased = errors.New("released")

// withRevision runs write with the revision we last heard of. If the server
// refuses it because the key moved on, the entry may still be ours: a write
// of ours whose reply we lost. Then write runs once more with the newer
// revision; otherwise the lease is lost.
func (l *Lease) withRevision(ctx context.Context, rev uint64, write func(rev uint64) error) error {
	err := write(rev)
	if err == nil || !isConflict(err) {
		if err != nil {
			return fmt.Errorf("lease %q: %w", l.key, err)
		}
		return nil
	}
	e, gerr := l.kv.Get(ctx, l.key)
	switch {
	case errors.Is(gerr, jetstream.ErrKeyNotFound):
		return l.lost("expired or deleted")
	case gerr != nil:
		return fmt.Errorf("lease %q: %w (reading the key after a conflict: %w)", l.key, err, gerr)
	case !bytes.Equal(e.Value(), l.value):
		he := heldError(l.key, e)
		return l.lost(fmt.Sprintf("now held by %q (revision %d)", he.Holder, he.Revision))
	}
	l.mu.Lock()
	l.rev = e.Revision()
	l.mu.Unlock()
	err = write(e.Revision())
	if err == nil {
		return nil
	}
	if isConflict(err) {
		return l.lost("taken over")
	}
	return fmt.Errorf("lease %q: %w", l.key, err)
}
