package projector_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projector"
)

// G2 with KV state: a replica that lost its slot but still runs (its lease
// expired during a pause, say) cannot move the slot's watermark once the
// new owner has fenced the slot. Its watermark could otherwise cover
// messages whose records it failed to write, and a later owner would start
// after them.
func TestKVWatermarkOfAPreviousOwnerIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, js := devtest.Connect(t, devtest.NATS(t))
	old := projector.NewKVStore(js, "jetproj_state_zombie", 1)
	if err := old.Init(ctx); err != nil {
		t.Fatal(err)
	}
	const slot = 3
	mark := func(st *projector.KVStore, token, seq uint64) error {
		b, err := st.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b.Watermark(slot, token, seq)
		_, err = b.Commit(ctx)
		return err
	}
	if err := old.Fence(ctx, slot, 1); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{10, 20} {
		if err := mark(old, 1, seq); err != nil {
			t.Fatalf("owner's watermark %d: %v", seq, err)
		}
	}

	// A new replica takes the slot over.
	next := projector.NewKVStore(js, "jetproj_state_zombie", 1)
	if err := next.Fence(ctx, slot, 2); err != nil {
		t.Fatal(err)
	}
	err := mark(old, 1, 500)
	var fenced *projector.FencedError
	if !errors.As(err, &fenced) || len(fenced.Slots) != 1 || fenced.Slots[0] != slot {
		t.Fatalf("previous owner's watermark after the takeover: %v; want a FencedError for slot %d", err, slot)
	}
	if wm, err := next.Watermark(ctx, slot); err != nil || wm != 20 {
		t.Fatalf("watermark %d (%v), want 20: the previous owner moved it", wm, err)
	}
	if err := mark(next, 2, 30); err != nil {
		t.Fatalf("new owner's watermark: %v", err)
	}
	if err := mark(next, 2, 40); err != nil {
		t.Fatalf("new owner's second watermark: %v", err)
	}
	if wm, err := next.Watermark(ctx, slot); err != nil || wm != 40 {
		t.Fatalf("watermark %d (%v), want 40", wm, err)
	}
	// Fencing again with the same token (a slot loaded again) keeps working.
	if err := next.Fence(ctx, slot, 2); err != nil {
		t.Fatal(err)
	}
	if err := mark(next, 2, 50); err != nil {
		t.Fatalf("watermark after fencing again: %v", err)
	}
}
