package projector

import (
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/internal/lease"
)

// manage keeps this replica's share of the slots: it heartbeats membership,
// renews owned slot leases, acquires free slots up to its share and releases
// slots beyond it, handing each change to the loop.
func (r *runner) manage(ctx context.Context) {
	owned := map[int]*lease.Lease{}
	tick := r.ttl / 3
	timer := time.NewTimer(0)
	defer timer.Stop()
	defer func() {
		// Graceful stop: give every slot back so others take over at once.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		defer cancel()
		for slot, l := range owned {
			r.tell(ctx, slotEvent{kind: evRelease, slot: slot}, true)
			_ = l.Release(rctx)
		}
		_ = r.leases.Delete(rctx, memberKey(r.replica))
	}()
	// A replica stopping gracefully gives its slots back, then deletes its
	// membership: seeing that delete, take the slots at once instead of at
	// the next tick. Members only put their key once per tick, so the watch
	// costs next to nothing while idle.
	var left <-chan jetstream.KeyValueEntry
	if w, err := r.leases.Watch(ctx, memberKey(">"), jetstream.UpdatesOnly(), jetstream.MetaOnly()); err == nil {
		defer w.Stop() //nolint:errcheck
		left = w.Updates()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case e, ok := <-left:
			if !ok {
				left = nil
				continue
			}
			if e == nil || e.Operation() == jetstream.KeyValuePut {
				continue
			}
		}
		r.manageOnce(ctx, owned)
		timer.Reset(jitter(tick))
	}
}

// renewers bounds the lease renewals in flight: a replica may own every
// slot of several projections, and one at a time they would take a round
// trip each.
const renewers = 16

// renewAll renews the leases concurrently and returns the errors of those
// that failed, by slot.
func renewAll(ctx context.Context, owned map[int]*lease.Lease) map[int]error {
	var (
		mu     sync.Mutex
		failed = map[int]error{}
		g      errgroup.Group
	)
	g.SetLimit(renewers)
	for slot, l := range owned {
		g.Go(func() error {
			if err := l.Renew(ctx); err != nil {
				mu.Lock()
				failed[slot] = err
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait()
	return failed
}

func memberKey(replica string) string { return "m." + replica }
func slotKey(slot int) string         { return "s." + strconv.Itoa(slot) }

func (r *runner) manageOnce(ctx context.Context, owned map[int]*lease.Lease) {
	// Forget slots the loop gave up (fenced or failed to load).
	for {
		select {
		case ev := <-r.forgotten:
			if l, ok := owned[ev]; ok {
				delete(owned, ev)
				_ = l
			}
			continue
		default:
		}
		break
	}
	// Passing trouble of the lease bucket (its leader moving, a node
	// restarting) is logged once per episode and fails readiness while it
	// lasts; the next tick tries again.
	var trouble error
	note := func(err error) {
		if err != nil && trouble == nil && jsretry.Transient(err) {
			trouble = err
		}
	}
	op := "slot leases " + r.leases.Bucket()
	defer func() {
		if trouble != nil {
			jsretry.FromContext(ctx).Failed(op, trouble)
		} else if ctx.Err() == nil {
			jsretry.FromContext(ctx).Succeeded(op)
		}
	}()
	if _, err := r.leases.Put(ctx, memberKey(r.replica), []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
		note(err)
		r.log.Debug("membership heartbeat failed", "error", err)
	}
	// Renew, and tell the loop about lost slots. A slot whose renewals
	// failed for two thirds of the TTL is given up (fenced) before its
	// lease can expire on the server, so that no two replicas hold it.
	lost := 0
	for slot, err := range renewAll(ctx, owned) {
		note(err)
		l := owned[slot]
		if errors.Is(err, lease.ErrLost) || time.Since(l.RenewedAt()) > r.ttl*2/3 {
			delete(owned, slot)
			r.tell(ctx, slotEvent{kind: evLost, slot: slot}, false)
			if lost++; lost == 1 || trouble == nil {
				r.log.Warn("slot lease lost", "slot", slot, "error", err)
			}
		}
	}
	if lost > 1 && trouble != nil {
		r.log.Warn("slot leases lost while JetStream is unavailable", "slots", lost, "error", trouble)
	}
	if paused := r.reg.paused(r.def.Name()); paused {
		for slot, l := range owned {
			r.tell(ctx, slotEvent{kind: evRelease, slot: slot}, true)
			_ = l.Release(ctx)
			delete(owned, slot)
		}
		return
	}
	members, held, err := r.census(ctx)
	if err != nil {
		note(err)
		r.log.Debug("census failed", "error", err)
		return
	}
	members = max(members, 1)
	target := (r.spec.Slots + members - 1) / members
	// Release beyond the share (highest slots first) so newcomers get work.
	if len(owned) > target {
		extra := len(owned) - target
		slots := slices.Sorted(maps.Keys(owned))
		slices.Reverse(slots)
		for _, s := range slots[:extra] {
			r.tell(ctx, slotEvent{kind: evRelease, slot: s}, true)
			_ = owned[s].Release(ctx)
			delete(owned, s)
		}
		return
	}
	// Acquire free slots up to the share, in random order.
	free := make([]int, 0, r.spec.Slots)
	for s := 0; s < r.spec.Slots; s++ {
		if _, mine := owned[s]; !mine && !held[s] {
			free = append(free, s)
		}
	}
	rand.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	for _, s := range free {
		if len(owned) >= target {
			break
		}
		l, err := lease.Acquire(ctx, r.leases, slotKey(s), r.replica)
		if err != nil {
			note(err)
			continue
		}
		owned[s] = l
		// Not waiting: renewals must not wait for a long batch.
		if !r.tell(ctx, slotEvent{kind: evAcquired, slot: s, lease: l}, false) {
			return
		}
	}
}

// census counts live members and the slots someone holds.
func (r *runner) census(ctx context.Context) (members int, held map[int]bool, err error) {
	lister, err := r.leases.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return 0, map[int]bool{}, nil
		}
		return 0, nil, err
	}
	held = map[int]bool{}
	for k := range lister.Keys() {
		switch {
		case strings.HasPrefix(k, "m."):
			members++
		case strings.HasPrefix(k, "s."):
			if n, err := strconv.Atoi(k[2:]); err == nil {
				held[n] = true
			}
		}
	}
	return members, held, nil
}

// tell hands an event to the loop and, with wait, waits until it is handled.
func (r *runner) tell(ctx context.Context, ev slotEvent, wait bool) bool {
	if wait {
		ev.done = make(chan struct{})
	}
	select {
	case r.events <- ev:
	case <-ctx.Done():
		if ev.kind == evAcquired {
			return false
		}
		// Stopping: the loop drains events until the manager returns.
		r.events <- ev
	}
	if wait {
		<-ev.done
	}
	return true
}
