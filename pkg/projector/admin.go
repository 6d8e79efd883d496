package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/lease"
	"github.com/jetproj/jetproj/internal/projectionspec"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
)

// AdminOptions configure an Admin.
type AdminOptions struct {
	// Replicas of the KV buckets and streams an operation creates when they
	// are missing (the registry, a projection's state bucket, lease bucket
	// and own stream): 1, 3 or 5, as the running projectors'
	// Options.Replicas. Default 1.
	Replicas int
	// Progress receives the progress lines of long operations (Reset,
	// Delete); nil discards them.
	Progress Progress
}

// Admin changes projections' lifecycle from outside the replicas that run
// them — what the `projector` commands init, reset, rebuild, delete,
// start, live, retry, skip and status do — through the NATS server the
// replicas use. Running replicas follow its changes: they give their slots
// back while a projection is paused, replay it after a reset, and carry out
// partition commands for the partitions they own.
//
// An Admin holds no resources of its own; it is safe for concurrent use.
type Admin struct {
	js       jetstream.JetStream
	replicas int
	progress Progress
}

// NewAdmin returns an Admin working through js. Partition commands (Retry,
// Skip, RebuildPartition) are requests on js's connection.
func NewAdmin(js jetstream.JetStream, opts AdminOptions) *Admin {
	if opts.Progress == nil {
		opts.Progress = func(string, ...any) {}
	}
	return &Admin{js: js, replicas: max(opts.Replicas, 1), progress: opts.Progress}
}

// Init prepares a projection: its state store, its init hook (OnInit, which
// creates the read model), its own stream of derived events and its
// registry entry (active, or paused until Resume when deployed with
// projection.ManualStart). It is idempotent and also revives a deleted
// projection. A projector initialises the projections it runs by itself
// the first time; Init does it beforehand (`projector init`).
func (a *Admin) Init(ctx context.Context, p projection.Definer) error {
	d, js, replicas := p.Def(), a.js, a.replicas
	reg, err := OpenRegistry(ctx, js, replicas)
	if err != nil {
		return err
	}
	store := StoreFor(js, d, replicas)
	if err := store.Init(ctx); err != nil {
		return err
	}
	init := projectionspec.Of(d).Hooks().Init
	if err := runHook(ctx, d, init); err != nil {
		return fmt.Errorf("projector: %s: init hook: %w", d.Name(), err)
	}
	if err := ensureOwnStream(ctx, js, d.Name(), replicas); err != nil {
		return err
	}
	manual, notLive := projectionspec.Of(d).Deployment()
	_, err = reg.Update(ctx, d.Name(), func(e *Entry, exists bool) error {
		if exists && e.State == StateActive {
			return nil
		}
		if exists && e.State == StateDeleted {
			// A revived projection numbers its derived events anew: the
			// linked streams still hold those of its previous life, whose
			// marks must not hide the new ones.
			e.Generation++
		}
		e.State, e.Kind, e.Slots, e.Reason = StateActive, projectionspec.Of(d).Kind().String(), projectionspec.Of(d).Settings().Slots, ""
		if !exists {
			e.NotLive = notLive
			if manual {
				e.State, e.Reason = StatePaused, "waiting for `projector start`"
			}
		}
		e.Store = "kv"
		switch {
		case projectionspec.Of(d).Settings().Pool != nil:
			e.Store = "postgres"
		case len(projectionspec.Of(d).Settings().TenantPools) > 0:
			e.Store = "postgres-per-tenant"
		}
		return nil
	})
	return err
}

// ensureOwnStream creates the projection's stream, project.<name>.>.
func ensureOwnStream(ctx context.Context, js jetstream.JetStream, name string, replicas int) error {
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: contract.ProjectionStream(name), Subjects: []string{contract.ProjectionSubjects(name)}, Replicas: max(replicas, 1),
		Storage: jetstream.FileStorage, AllowDirect: true, Duplicates: 2 * time.Minute,
		Description: "jetproj events derived by projection " + name,
	})
	if err != nil {
		return fmt.Errorf("projector: stream of %s: %w", name, err)
	}
	return nil
}

// Resume lets the replicas run a projection deployed with
// projection.ManualStart, which Init left paused (`projector start`): its
// registry entry becomes active, and the replicas running it take its
// slots. It does not start a projector; Projector.Run does.
func (a *Admin) Resume(ctx context.Context, p projection.Definer) error {
	reg, err := OpenRegistry(ctx, a.js, a.replicas)
	if err != nil {
		return err
	}
	return resume(ctx, reg, p.Def().Name(), false)
}

// SetLive switches emission on or off (`projector live`). Switched on, the
// projection emits for every event appended after SetLive began, and
// nothing for what it catches up on before that. Switched off, replicas
// stop emitting as they learn of it (within moments; events they handle
// until then still emit). The projection must have been initialised.
//
// Switching on takes two registry updates: the first marks the switch in
// progress (LivePending), then the source's end is read and recorded as
// ReplayUntil. A replica of a deployment that is not live reads the entry
// from the server before each batch and waits out a switch in progress,
// so an event appended after the source's end was read is never handled as
// not live, however late the replica's copy of the registry is. If SetLive
// fails half-way, the projection waits (its batches fail and are retried)
// until SetLive is run again.
func (a *Admin) SetLive(ctx context.Context, p projection.Definer, live bool) error {
	d, js := p.Def(), a.js
	reg, err := OpenRegistry(ctx, js, a.replicas)
	if err != nil {
		return err
	}
	e, err := reg.Update(ctx, d.Name(), func(e *Entry, exists bool) error {
		if !exists {
			return fmt.Errorf("%w: %q: run init first", ErrUnknownProjection, d.Name())
		}
		if live && e.NotLive {
			e.LivePending = true
		}
		e.NotLive = !live
		if !live {
			e.LivePending = false
		}
		return nil
	})
	if err != nil || !e.LivePending {
		return err
	}
	head, err := sourceHead(ctx, js, d)
	if err != nil {
		return fmt.Errorf("projector: %s is switching live and waits for SetLive to run again: %w", d.Name(), err)
	}
	_, err = reg.Update(ctx, d.Name(), func(e *Entry, exists bool) error {
		if !exists {
			return fmt.Errorf("%w: %q: run init first", ErrUnknownProjection, d.Name())
		}
		if e.LivePending {
			e.ReplayUntil = max(e.ReplayUntil, head)
			e.LivePending = false
		}
		return nil
	})
	return err
}

func sourceHead(ctx context.Context, js jetstream.JetStream, d projection.Definer) (uint64, error) {
	if src := projectionspec.Of(d).CustomSource(); src != nil {
		return src.Head(ctx)
	}
	s, err := js.Stream(ctx, projectionspec.Of(d).SourceConfig().Stream)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

func runHook(ctx context.Context, d projection.Definer, h projection.Hook) error {
	if h == nil {
		return nil
	}
	settings := projectionspec.Of(d).Settings()
	pools := []*pgxpool.Pool{settings.Pool}
	if settings.Pool == nil {
		pools = nil
		for _, p := range settings.TenantPools {
			pools = append(pools, p)
		}
	}
	if len(pools) == 0 {
		return h(ctx, nil)
	}
	for _, pool := range pools {
		if err := runHookIn(ctx, pool, d.Def().Name(), h); err != nil {
			return err
		}
	}
	return nil
}

// runHookIn runs a hook in a transaction that holds the projection's
// advisory lock, so replicas starting together do not race (CREATE TABLE IF
// NOT EXISTS is not safe concurrently).
func runHookIn(ctx context.Context, pool *pgxpool.Pool, name string, h projection.Hook) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('jetproj.projection.' || $1))`, name); err != nil {
		return err
	}
	if err := h(ctx, tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// Progress receives progress lines of long operations; nil discards them.
type Progress func(format string, args ...any)

// pause marks the projection paused and waits until no replica holds a slot.
func pause(ctx context.Context, js jetstream.JetStream, reg *Registry, name, reason string, progress Progress) error {
	if _, err := reg.Update(ctx, name, func(e *Entry, exists bool) error {
		if !exists {
			return fmt.Errorf("%w: %q: run init first", ErrUnknownProjection, name)
		}
		if !heldBack(*e) {
			e.Reason = reason // a hold's reason outlives the operation
		}
		e.State = StatePaused
		return nil
	}); err != nil {
		return err
	}
	kv, err := js.KeyValue(ctx, contract.LeaseBucket(name))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	progress("waiting for replicas to give %s's slots back …", name)
	for {
		lister, err := kv.ListKeys(ctx)
		held := 0
		if err == nil {
			for k := range lister.Keys() {
				if strings.HasPrefix(k, "s.") {
					held++
				}
			}
		} else if !errors.Is(err, jetstream.ErrNoKeysFound) {
			return err
		}
		if held == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// heldBack reports whether e waits for an operator (ManualStart) rather
// than for an operation of the projector's (reset, delete).
func heldBack(e Entry) bool {
	return e.State == StatePaused && e.Reason != "" && e.Reason != "reset" && e.Reason != "delete"
}

func resume(ctx context.Context, reg *Registry, name string, bump bool) error {
	_, err := reg.Update(ctx, name, func(e *Entry, exists bool) error {
		if !exists {
			// Resuming creates nothing: init does, with the projection's
			// schema and hooks.
			return fmt.Errorf("%w: %q: run init first", ErrUnknownProjection, name)
		}
		e.State, e.Reason = StateActive, ""
		if bump {
			e.Generation++
		}
		return nil
	})
	return err
}

// Reset pauses the projection until every replica has given its slots
// back, runs its reset hook (OnReset), removes its positions and state,
// and resumes it: replicas then rebuild it from the start of its source,
// emitting nothing for the messages already there. `projector reset` and
// `projector rebuild` both do this. A projection still waiting for Resume
// (ManualStart) stays paused. The derived events a KV-state projection's
// records still hold are published first; if JetStream refuses them,
// nothing is reset and the projection goes on as it was.
func (a *Admin) Reset(ctx context.Context, p projection.Definer) error {
	d, js, replicas, progress := p.Def(), a.js, a.replicas, a.progress
	reg, err := OpenRegistry(ctx, js, replicas)
	if err != nil {
		return err
	}
	if err := pause(ctx, js, reg, d.Name(), "reset", progress); err != nil {
		return err
	}
	// A projection held back (deployed with ManualStart, not started yet:
	// pause kept that reason) stays held after its reset; any other runs
	// again.
	goOn := func(ctx context.Context, bump bool) error {
		_, err := reg.Update(ctx, d.Name(), func(e *Entry, _ bool) error {
			if !heldBack(*e) {
				e.State, e.Reason = StateActive, ""
			}
			if bump {
				e.Generation++
			}
			return nil
		})
		return err
	}
	store := StoreFor(js, d, replicas)
	if err := store.Init(ctx); err != nil {
		return err
	}
	if kv, ok := store.(*KVStore); ok {
		// Derived events committed before the reset go out first; if
		// JetStream refuses some, nothing is reset and the projection runs
		// on: the records are all that hold them.
		if err := publishKVLeftovers(ctx, js, d, kv, replicas, progress); err != nil {
			// Nothing was changed: the projection goes on as it was, even
			// when ctx is what ended the reset.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if rerr := goOn(rctx, false); rerr != nil {
				err = errors.Join(err, rerr)
			}
			return err
		}
	}
	reset := projectionspec.Of(d).Hooks().Reset
	if err := runHook(ctx, d, reset); err != nil {
		return fmt.Errorf("projector: %s: reset hook: %w", d.Name(), err)
	}
	if err := store.Reset(ctx); err != nil {
		return err
	}
	head, err := sourceHead(ctx, js, d)
	if err != nil {
		return err
	}
	if _, err := reg.Update(ctx, d.Name(), func(e *Entry, _ bool) error {
		e.ReplayUntil = max(e.ReplayUntil, head)
		return nil
	}); err != nil {
		return err
	}
	progress("%s reset; replicas replay it from the start, emitting nothing for the %d messages already there", d.Name(), head)
	return goOn(ctx, true)
}

// publishKVLeftovers publishes the derived events the records of a KV-state
// projection still hold.
func publishKVLeftovers(ctx context.Context, js jetstream.JetStream, d *projection.Definition, kv *KVStore, replicas int, progress Progress) error {
	if err := ensureOwnStream(ctx, js, d.Name(), replicas); err != nil {
		return err
	}
	n, err := publishLeftovers(ctx, js, d.Name(), kv, projectionspec.Of(d).Settings().Slots, replicas)
	if err != nil {
		return fmt.Errorf("projector: %s: not reset: derived events its records still hold were not published (%w); fix the cause and reset again", d.Name(), err)
	}
	if n > 0 {
		progress("%s: published %d derived events (links included) its records still held", d.Name(), n)
	}
	return nil
}

// Delete pauses the projection until every replica has given its slots
// back, runs its delete hook (OnDelete) and removes its positions and
// state, its lease bucket and its own stream (linked streams stay); the
// registry keeps a "deleted" entry so running replicas do not bring it
// back. Init revives it (`projector delete`, `projector init`).
func (a *Admin) Delete(ctx context.Context, p projection.Definer) error {
	d, js, replicas, progress := p.Def(), a.js, a.replicas, a.progress
	reg, err := OpenRegistry(ctx, js, replicas)
	if err != nil {
		return err
	}
	if err := pause(ctx, js, reg, d.Name(), "delete", progress); err != nil {
		return err
	}
	del := projectionspec.Of(d).Hooks().Delete
	if err := runHook(ctx, d, del); err != nil {
		return fmt.Errorf("projector: %s: delete hook: %w", d.Name(), err)
	}
	// Positions, state and outbox go with the read model, in every
	// database the projection wrote to (one per tenant).
	if s, ok := StoreFor(js, d, replicas).(interface {
		StateStore
		Delete(context.Context) error
	}); ok {
		if _, kv := s.(*KVStore); !kv {
			if err := s.Init(ctx); err != nil {
				return err
			}
		}
		if err := s.Delete(ctx); err != nil {
			return err
		}
	}
	if err := js.DeleteKeyValue(ctx, contract.LeaseBucket(d.Name())); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return err
	}
	// The projection's own stream goes; linked streams stay.
	if err := js.DeleteStream(ctx, contract.ProjectionStream(d.Name())); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return err
	}
	_, err = reg.Update(ctx, d.Name(), func(e *Entry, _ bool) error {
		e.State, e.Reason = StateDeleted, ""
		return nil
	})
	return err
}

// Command is a partition command.
type Command struct {
	Op        string `json:"op"` // retry, skip, rebuild
	Partition string `json:"partition"`
}

// CommandReply is the owner's answer.
type CommandReply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Retry retries a parked partition from its failing event (`projector
// retry`), once its cause is fixed. partition is the partition's key
// ("wallet/w-1", projection.GlobalPartition for a global projection).
//
// Retry, Skip and RebuildPartition send a request to the replica that
// owns the partition's slot, which carries the command out and answers at
// once. When no replica listens (no responders), the command is carried
// out here, on the state store, under the slot's lease; that fails while a
// replica holds the slot ("its slot is held"). Nobody answers while a slot
// changes hands: keep ctx short and try again when it ends, as `projector
// retry` does (5 s at a time, for 30 s). A NATS user that may not publish
// to the projection's control subject gets no answer either: the server
// drops the request and reports nats.ErrPermissionViolation on the
// connection.
func (a *Admin) Retry(ctx context.Context, p projection.Definer, partition string) error {
	return a.partitionCommand(ctx, p.Def(), Command{Op: "retry", Partition: partition})
}

// Skip skips a parked (or failing) partition's failing event (`projector
// skip`): the partition goes on from the next one. See Retry for how the
// command reaches the partition.
func (a *Admin) Skip(ctx context.Context, p projection.Definer, partition string) error {
	return a.partitionCommand(ctx, p.Def(), Command{Op: "skip", Partition: partition})
}

// RebuildPartition rebuilds one partition (`projector rebuild --partition`):
// its OnResetPartition hook runs, then it handles its events again from the
// first, emitting nothing for those it had handled. See Retry for how the
// command reaches the partition.
func (a *Admin) RebuildPartition(ctx context.Context, p projection.Definer, partition string) error {
	return a.partitionCommand(ctx, p.Def(), Command{Op: "rebuild", Partition: partition})
}

// partitionCommand asks the replica owning the partition to carry cmd out.
// When no replica answers, the command is applied to the store directly
// under the slot's lease.
func (a *Admin) partitionCommand(ctx context.Context, d *projection.Definition, cmd Command) error {
	js, replicas := a.js, a.replicas
	b, _ := json.Marshal(cmd)
	msg, err := js.Conn().RequestWithContext(ctx, contract.ControlSubject(d.Name()), b)
	if err == nil {
		var rep CommandReply
		if err := json.Unmarshal(msg.Data, &rep); err != nil {
			return err
		}
		if !rep.OK {
			return errors.New(rep.Error)
		}
		return nil
	}
	if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
		return err
	}
	// Nobody answered: take the slot's lease and change the record.
	slot := SlotOf(cmd.Partition, projectionspec.Of(d).Settings().Slots)
	kv, err := lease.EnsureBucket(ctx, js, contract.LeaseBucket(d.Name()), 6*time.Second, replicas)
	if err != nil {
		var mm *lease.ConfigMismatchError
		if !errors.As(err, &mm) {
			return err
		}
		if kv, err = js.KeyValue(ctx, contract.LeaseBucket(d.Name())); err != nil {
			return err
		}
	}
	l, err := lease.Acquire(ctx, kv, slotKey(slot), "cli")
	if err != nil {
		return fmt.Errorf("projector: partition %s: its owner did not answer and its slot is held: %w", cmd.Partition, err)
	}
	defer l.Release(context.WithoutCancel(ctx)) //nolint:errcheck
	store := StoreFor(js, d, replicas)
	if err := store.Init(ctx); err != nil {
		return err
	}
	if err := store.Fence(ctx, slot, l.Revision()); err != nil {
		return err
	}
	rec, err := store.Get(ctx, slot, cmd.Partition)
	if err != nil {
		return err
	}
	if rec == nil {
		return fmt.Errorf("projector: no partition %q in %s", cmd.Partition, d.Name())
	}
	if err := applyCommand(rec, cmd); err != nil {
		return err
	}
	bt, err := store.Begin(ctx)
	if err != nil {
		return err
	}
	if cmd.Op == "rebuild" {
		if err := resetPartition(ctx, d, bt, *rec); err != nil {
			bt.Rollback(ctx)
			return err
		}
	}
	bt.Put(slot, l.Revision(), *rec)
	_, err = bt.Commit(ctx)
	return err
}

// resetPartition runs the projection's OnResetPartition hook for rec in
// batch b: in the database of the partition's tenant for a tenant store (a
// partition that has no tenant yet never wrote anything there). A hook
// that panics is an error, not the end of the replica.
func resetPartition(ctx context.Context, d projection.Definer, b Batch, rec Record) (err error) {
	resetPart := projectionspec.Of(d).Hooks().ResetPartition
	if resetPart == nil {
		return nil
	}
	if tb, ok := b.(TenantBatch); ok {
		if rec.Tenant == "" {
			return nil
		}
		if err := tb.Use(ctx, rec.Tenant); err != nil {
			return fmt.Errorf("projector: %s: reset partition %s: %w", d.Def().Name(), rec.Key, err)
		}
	}
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("projector: %s: OnResetPartition panicked for %s: %v", d.Def().Name(), rec.Key, v)
		}
	}()
	return resetPart(ctx, b.Tx(), rec.Key)
}

// applyCommand changes a record as the command asks; the partition then
// catches up from its position.
func applyCommand(rec *Record, cmd Command) error {
	switch cmd.Op {
	case "retry":
		if rec.Parked == nil && !rec.Behind {
			return fmt.Errorf("projector: partition %s is not parked", rec.Key)
		}
		rec.Parked, rec.Failing, rec.Behind = nil, nil, true
	case "skip":
		p := rec.Parked
		if p == nil {
			p = rec.Failing
		}
		if p == nil {
			return fmt.Errorf("projector: partition %s has no failing event to skip", rec.Key)
		}
		rec.Skip = p.Seq
		rec.Parked, rec.Failing, rec.Behind = nil, nil, true
	case "rebuild":
		// What the partition had handled is replayed without emitting.
		rec.Replay = max(rec.Replay, rec.Seq)
		rec.Seq, rec.Position, rec.State = 0, 0, nil
		rec.Parked, rec.Failing, rec.Behind = nil, nil, true
	default:
		return fmt.Errorf("projector: unknown command %q", cmd.Op)
	}
	return nil
}

// control handles a partition command addressed to this projection; only
// the replica owning the partition's slot answers.
func (r *runner) control(ctx context.Context, m *nats.Msg) {
	var cmd Command
	if err := json.Unmarshal(m.Data, &cmd); err != nil {
		return
	}
	slot := SlotOf(cmd.Partition, r.spec.Slots)
	if _, owned := r.slots[slot]; !owned {
		return
	}
	reply := func(err error) {
		rep := CommandReply{OK: err == nil}
		if err != nil {
			rep.Error = err.Error()
		}
		b, _ := json.Marshal(rep)
		_ = m.Respond(b)
	}
	p := r.part(cmd.Partition)
	if p == nil {
		reply(fmt.Errorf("projector: no partition %q in %s", cmd.Partition, r.def.Name()))
		return
	}
	if _, held := r.holds[p]; held {
		// Derived events JetStream refused (ErrUnpublished parks on them):
		// the operator says the cause is fixed, so try them now.
		delete(r.holds, p)
		if err := r.sendUnsent(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("derived events not published yet; retrying", "error", err)
		}
	}
	rec := p.record()
	if rec.Subject == "" {
		rec.Subject = r.subjectOf(p)
	}
	if err := applyCommand(&rec, cmd); err != nil {
		reply(err)
		return
	}
	b, err := r.store.Begin(ctx)
	if err != nil {
		reply(err)
		return
	}
	if cmd.Op == "rebuild" {
		if err := resetPartition(ctx, r.def, b, rec); err != nil {
			b.Rollback(ctx)
			reply(err)
			return
		}
	}
	b.Put(slot, r.slots[slot].token, rec)
	revs, err := b.Commit(ctx)
	if err != nil {
		reply(err)
		return
	}
	rec.Revision = revs[rec.Key]
	r.setRec(p, rec)
	f := &failure{next: time.Now()}
	p.setFailure(f)
	r.markFailing(p)
	if r.def.Kind() == projectionspec.Global {
		f.retrying = true
		if r.restartAt == 0 || rec.Seq+1 < r.restartAt {
			r.restartAt = rec.Seq + 1
		}
	}
	r.log.Info("partition command", "op", cmd.Op, "partition", cmd.Partition)
	reply(nil)
}
