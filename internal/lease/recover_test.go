package lease

import (
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
)

// The reply to a write can be lost (timeout, disconnect) after the server
// applied it. The lease must recognise its own write instead of reporting
// the key as held or the lease as lost.
func TestLostRepliesAreRecognised(t *testing.T) {
	t.Parallel()
	srv := devtest.NATS(t)
	_, js := devtest.Connect(t, srv)
	ctx := t.Context()
	kv, err := EnsureBucket(ctx, js, "leases", 30*time.Second, 1)
	if err != nil {
		t.Fatalf("EnsureBucket: %v", err)
	}

	// Acquire: the create landed, its reply did not; the claim is sent again.
	c, err := newClaim("a")
	if err != nil {
		t.Fatal(err)
	}
	c.firstSent = time.Now()
	rev, err := kv.Create(ctx, "k", c.value)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	l, err := c.acquire(ctx, kv, "k")
	if err != nil {
		t.Fatalf("acquire again: %v", err)
	}
	if l.Revision() != rev || !l.RenewedAt().Equal(c.firstSent) {
		t.Fatalf("adopted lease: revision %d renewed at %v, want %d at %v", l.Revision(), l.RenewedAt(), rev, c.firstSent)
	}

	// Renew: an update landed, its reply did not.
	rev, err = kv.Update(ctx, "k", l.value, l.Revision())
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if err := l.Renew(ctx); err != nil {
		t.Fatalf("renew after a lost reply: %v", err)
	}
	if l.Revision() <= rev {
		t.Fatalf("revision after renew = %d, want > %d", l.Revision(), rev)
	}

	// Release: same.
	if _, err := kv.Update(ctx, "k", l.value, l.Revision()); err != nil {
		t.Fatalf("update: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("release after a lost reply: %v", err)
	}
	if _, err := Acquire(ctx, kv, "k", "b"); err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
}
