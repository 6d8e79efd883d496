package lease_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/lease"
)

func TestMain(m *testing.M) { devtest.Main(m) }

const bucket = "jetproj_leases"

type testBundle struct {
	srv *devenv.NATS
	js  jetstream.JetStream
	kv  jetstream.KeyValue
}

func setup(t *testing.T, ttl time.Duration) *testBundle {
	t.Helper()
	srv := devtest.NATS(t)
	_, js := devtest.Connect(t, srv)
	kv, err := lease.EnsureBucket(t.Context(), js, bucket, ttl, 1)
	if err != nil {
		t.Fatalf("EnsureBucket: %v", err)
	}
	return &testBundle{srv: srv, js: js, kv: kv}
}

// kvFor opens the bucket on a connection of its own.
func (b *testBundle) kvFor(t *testing.T) jetstream.KeyValue {
	t.Helper()
	_, js := devtest.Connect(t, b.srv)
	kv, err := js.KeyValue(t.Context(), bucket)
	if err != nil {
		t.Fatalf("open bucket: %v", err)
	}
	return kv
}

func holderOf(t *testing.T, kv jetstream.KeyValue, key string) string {
	t.Helper()
	e, err := kv.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	var v struct {
		Holder string `json:"holder"`
	}
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		t.Fatalf("decode %q: %v", e.Value(), err)
	}
	return v.Holder
}

func TestAcquireHeldReleaseReacquire(t *testing.T) {
	t.Parallel()
	b := setup(t, 30*time.Second)
	ctx := t.Context()

	a, err := lease.Acquire(ctx, b.kv, "feeder.main", "a")
	if err != nil {
		t.Fatalf("acquire a: %v", err)
	}
	if a.Key() != "feeder.main" || a.Holder() != "a" || a.Revision() == 0 {
		t.Fatalf("lease = key %q holder %q revision %d", a.Key(), a.Holder(), a.Revision())
	}

	_, err = lease.Acquire(ctx, b.kv, "feeder.main", "b")
	if !errors.Is(err, lease.ErrHeld) {
		t.Fatalf("second acquire: got %v, want ErrHeld", err)
	}
	var held *lease.HeldError
	if !errors.As(err, &held) {
		t.Fatalf("second acquire: %T is not *HeldError", err)
	}
	if held.Holder != "a" || held.Revision != a.Revision() || held.Key != "feeder.main" || held.AcquiredAt.IsZero() {
		t.Fatalf("HeldError = %+v, want holder a at revision %d", held, a.Revision())
	}

	before := a.Revision()
	if err := a.Renew(ctx); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if a.Revision() <= before {
		t.Fatalf("revision after renew = %d, want > %d", a.Revision(), before)
	}
	if got := holderOf(t, b.kv, "feeder.main"); got != "a" {
		t.Fatalf("holder after renew = %q, want a", got)
	}

	if err := a.Release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if err := a.Renew(ctx); !errors.Is(err, lease.ErrLost) {
		t.Fatalf("renew after release: got %v, want ErrLost", err)
	}

	bl, err := lease.Acquire(ctx, b.kv, "feeder.main", "b")
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	if bl.Revision() <= a.Revision() {
		t.Fatalf("fencing token went back: b %d, a %d", bl.Revision(), a.Revision())
	}
	// A lease for another key is independent.
	if _, err := lease.Acquire(ctx, b.kv, "feeder.other", "a"); err != nil {
		t.Fatalf("acquire other key: %v", err)
	}
}

func TestExpiredLeaseIsLost(t *testing.T) {
	t.Parallel()
	const ttl = time.Second
	b := setup(t, ttl)
	ctx := t.Context()

	// a holds two keys and stops renewing; b takes both over once they expire.
	var stale [2]*lease.Lease
	for i := range stale {
		l, err := lease.Acquire(ctx, b.kv, fmt.Sprintf("slot.%d", i), "a")
		if err != nil {
			t.Fatalf("acquire: %v", err)
		}
		stale[i] = l
	}
	var fresh [2]*lease.Lease
	for i := range fresh {
		devtest.Eventually(t, 10*time.Second, func() error {
			l, err := lease.Acquire(ctx, b.kv, fmt.Sprintf("slot.%d", i), "b")
			if err != nil {
				return err
			}
			fresh[i] = l
			return nil
		})
		if age := time.Since(stale[i].RenewedAt()); age < ttl {
			t.Fatalf("b acquired %v after a's last write, before the TTL %v", age, ttl)
		}
	}

	if err := stale[0].Renew(ctx); !errors.Is(err, lease.ErrLost) {
		t.Fatalf("stale renew: got %v, want ErrLost", err)
	}
	if err := stale[1].Release(ctx); !errors.Is(err, lease.ErrLost) {
		t.Fatalf("stale release: got %v, want ErrLost", err)
	}
	for i, l := range fresh {
		if got := holderOf(t, b.kv, l.Key()); got != "b" {
			t.Fatalf("slot.%d holder = %q, want b", i, got)
		}
		if err := l.Renew(ctx); err != nil {
			t.Fatalf("b renew slot.%d: %v", i, err)
		}
		if l.Revision() <= stale[i].Revision() {
			t.Fatalf("fencing token went back: b %d, a %d", l.Revision(), stale[i].Revision())
		}
	}
}

func TestEnsureBucket(t *testing.T) {
	t.Parallel()
	srv := devtest.NATS(t)
	_, js := devtest.Connect(t, srv)
	ctx := t.Context()

	for range 2 {
		kv, err := lease.EnsureBucket(ctx, js, "leases", 10*time.Second, 1)
		if err != nil {
			t.Fatalf("EnsureBucket: %v", err)
		}
		if got, err := lease.BucketTTL(ctx, kv); err != nil || got != 10*time.Second {
			t.Fatalf("BucketTTL = %v, %v; want 10s", got, err)
		}
	}

	_, err := lease.EnsureBucket(ctx, js, "leases", 20*time.Second, 1)
	var mismatch *lease.ConfigMismatchError
	if !errors.As(err, &mismatch) {
		t.Fatalf("EnsureBucket with another TTL: got %v, want *ConfigMismatchError", err)
	}
	if mismatch.Bucket != "leases" || mismatch.WantTTL != 20*time.Second || mismatch.GotTTL != 10*time.Second {
		t.Fatalf("mismatch = %+v", mismatch)
	}

	if _, err := lease.EnsureBucket(ctx, js, "short", 10*time.Millisecond, 1); err == nil {
		t.Fatal("EnsureBucket with a 10ms TTL: got nil error")
	}

	// A bucket without TTL cannot hold leases.
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "forever"})
	if err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	err = lease.Run(ctx, kv, "k", "a", lease.Options{}, func(context.Context, *lease.Lease) error { return nil })
	if err == nil {
		t.Fatal("Run on a bucket without TTL: got nil error")
	}
}
