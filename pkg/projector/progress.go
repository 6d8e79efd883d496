package projector

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/memorybucket"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
)

// Replicas publish how far they applied each projection, while someone
// waits for it (WaitFor), in KV bucket contract.ProgressBucket: one key per
// projection and replica, "<projection>.<replica>", holding a
// ReplicaProgress. It is kept in memory: it only mirrors what the state
// stores hold, and a replica publishes it again when asked.

// Publishing progress: while a waiter asked within progressWant, a replica
// publishes after each change, at most every progressEvery; otherwise it
// publishes nothing (idle and unobserved projections cost nothing).
const (
	progressEvery = 2 * time.Millisecond
	progressWant  = 3 * time.Second
	// progressRefresh: a want publishes the current progress again when
	// the last publication is older (the bucket may have lost it).
	progressRefresh = time.Second
	// maxFailingListed bounds the failing partitions listed per slot.
	maxFailingListed = 1000
)

// progressKey is the key of a replica's progress for a projection.
func progressKey(name, replica string) string { return name + "." + kvKeyToken(replica) }

// ReplicaProgress is what a replica publishes about one projection (WaitFor reads
// it). Seq values are sequences of the source stream.
type ReplicaProgress struct {
	Projection string `json:"projection"`
	Replica    string `json:"replica"`
	Generation int    `json:"generation"`
	// Stream and Subjects are the projection's source; Subjects empty
	// means every subject of the stream.
	Stream   string   `json:"stream"`
	Subjects []string `json:"subjects,omitempty"`
	// Partitions tells how messages map to partitions: "aggregate",
	// "global", "subject:<skip>" or "custom".
	Partitions string         `json:"partitions"`
	Slots      int            `json:"slots"`
	Owned      []SlotProgress `json:"owned"`
	Updated    time.Time      `json:"updated"`
}

// SlotProgress is one owned slot's progress.
type SlotProgress struct {
	Slot int `json:"slot"`
	// Token is the slot lease's revision: a later owner's is higher.
	Token uint64 `json:"token"`
	// Seq: every message of the slot up to it is applied and stored,
	// except those of the Failing partitions after their own Seq.
	Seq     uint64             `json:"seq"`
	Failing []FailingPartition `json:"failing,omitempty"`
	// Truncated: more partitions fail than are listed.
	Truncated bool `json:"truncated,omitempty"`
}

// FailingPartition is a partition that is retrying or parked.
type FailingPartition struct {
	Key     string `json:"key"`
	Subject string `json:"subject,omitempty"`
	// Seq is the last message the partition applied.
	Seq       uint64 `json:"seq"`
	Parked    bool   `json:"parked,omitempty"`
	FailedSeq uint64 `json:"failed_seq,omitempty"`
	EventType string `json:"event_type,omitempty"`
	Error     string `json:"error,omitempty"`
}

// progressPub publishes a runner's progress off its loop. The loop hands
// it snapshots (note); run publishes them while someone waits.
type progressPub struct {
	mu     sync.Mutex
	latest *ReplicaProgress // newest snapshot
	seq    uint64           // counts snapshots
	wake   chan struct{}
	fp     [4]uint64 // what the latest snapshot was built from (loop only)
}

func newProgressPub() *progressPub { return &progressPub{wake: make(chan struct{}, 1)} }

// noteProgress hands the publisher a snapshot when what WaitFor looks at
// changed since the last one: the slots, their stored watermarks, the
// failing partitions. Called by the loop between steps.
func (r *runner) noteProgress() {
	pp := r.progress
	if pp == nil {
		return
	}
	var fp [4]uint64
	fp[0] = r.durable
	for n, s := range r.slots {
		fp[1] += uint64(n+1)*31 + s.token
		fp[2] += s.watermark
	}
	for _, p := range r.failing {
		if p.failure() != nil {
			fp[3] += p.seq*7 + 1
			if p.parked() != nil {
				fp[3] += 1 << 40
			}
		}
	}
	if fp == pp.fp {
		return
	}
	pp.fp = fp
	snap := r.progressSnapshot()
	pp.mu.Lock()
	pp.latest = snap
	pp.seq++
	pp.mu.Unlock()
	select {
	case pp.wake <- struct{}{}:
	default:
	}
}

// progressSnapshot describes the owned slots as WaitFor needs them.
func (r *runner) progressSnapshot() *ReplicaProgress {
	sc := r.def.SourceConfig()
	snap := &ReplicaProgress{
		Projection: r.def.Name(), Replica: r.replica, Generation: r.generation(),
		Stream: sc.Stream, Subjects: sc.Subjects, Partitions: partitionsKind(r.parts_), Slots: r.spec.Slots,
		Owned: make([]SlotProgress, 0, len(r.slots)),
	}
	if r.def.CustomSource() != nil {
		snap.Stream = "" // not a stream WaitFor can read
	}
	idx := make(map[int]int, len(r.slots))
	for n, s := range r.slots {
		idx[n] = len(snap.Owned)
		snap.Owned = append(snap.Owned, SlotProgress{Slot: n, Token: s.token, Seq: min(s.watermark, r.durable)})
	}
	for _, p := range r.failing {
		f := p.failure()
		if f == nil || !r.current(p) {
			continue
		}
		sp := &snap.Owned[idx[int(p.slot)]]
		if len(sp.Failing) >= maxFailingListed {
			sp.Truncated = true
			continue
		}
		fl := FailingPartition{Key: p.key(), Subject: r.subjectOf(p), Seq: p.seq, FailedSeq: f.seq, EventType: f.typ, Error: f.err}
		if pk := p.parked(); pk != nil {
			fl.Parked, fl.FailedSeq, fl.EventType, fl.Error = true, pk.Seq, pk.EventType, pk.Error
		}
		sp.Failing = append(sp.Failing, fl)
	}
	return snap
}

// partitionsKind names a partition provider for WaitFor.
func partitionsKind(p projection.PartitionProvider) string {
	switch p := p.(type) {
	case projection.AggregatePartitions:
		return "aggregate"
	case projection.GlobalPartitions:
		return "global"
	case projection.SubjectPartitions:
		return "subject:" + strconv.Itoa(p.Skip)
	}
	return "custom"
}

// runProgress publishes snapshots while waiters ask for them, until ctx
// ends. Failures are retried with the next snapshot or want.
func (r *runner) runProgress(ctx context.Context) {
	pp := r.progress
	wants := make(chan *nats.Msg, 8)
	sub, err := r.nc.ChanSubscribe(contract.ProgressSubject(r.def.Name()), wants)
	if err != nil {
		r.log.Warn("progress requests not received; WaitFor cannot see this replica", "error", err)
		return
	}
	defer sub.Unsubscribe() //nolint:errcheck
	var (
		kv        jetstream.KeyValue
		wantUntil time.Time
		lastPub   time.Time
		published uint64 // snapshot number last published
		timer     = time.NewTimer(time.Hour)
		key       = progressKey(r.def.Name(), r.replica)
		force     bool
		checked   bool // the bucket's storage (memorybucket.Warn)
	)
	defer timer.Stop()
	defer func() {
		// A replica that stops hands its slots over; its entry would only
		// show an old owner's progress.
		if kv != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = kv.Delete(dctx, key)
			cancel()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wants:
			if time.Now().After(wantUntil) || time.Since(lastPub) > progressRefresh {
				force = true
			}
			wantUntil = time.Now().Add(progressWant)
		case <-pp.wake:
		case <-timer.C:
		}
		if time.Now().After(wantUntil) {
			continue
		}
		pp.mu.Lock()
		snap, n := pp.latest, pp.seq
		pp.mu.Unlock()
		if snap == nil || (n == published && !force) {
			continue
		}
		if d := progressEvery - time.Since(lastPub); d > 0 && !force {
			timer.Reset(d)
			continue
		}
		if kv == nil {
			if kv, err = openProgress(ctx, r.js, r.streamReplicas); err != nil {
				r.log.Debug("progress bucket not opened", "error", err)
				continue
			}
			if !checked {
				checked = true
				memorybucket.Warn(ctx, r.js, contract.ProgressBucket, r.log)
			}
		}
		snap.Updated = time.Now().UTC()
		b, _ := json.Marshal(snap)
		if _, err := kv.Put(ctx, key, b); err != nil {
			if ctx.Err() == nil {
				r.log.Debug("progress not published", "error", err)
			}
			kv = nil // the bucket may be gone (memory storage, server restart)
			continue
		}
		published, lastPub, force = n, time.Now(), false
	}
}

// progressConfig is the progress bucket's configuration. It is kept on
// file: a replicated stream in memory loses its copy on every node that
// restarts, and rolling restarts followed by the loss of the leader can
// leave it without a leader for good.
func progressConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: contract.ProgressBucket, History: 1, Storage: jetstream.FileStorage, Replicas: max(replicas, 1),
		TTL:         time.Hour,
		Description: "jetproj: how far each replica applied each projection, published while someone waits (WaitFor)",
	}
}

// openProgress opens the progress bucket, creating it when absent (never
// changing an existing one's settings).
func openProgress(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, contract.ProgressBucket)
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, err
	}
	kv, err = js.CreateKeyValue(ctx, progressConfig(replicas))
	if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return js.KeyValue(ctx, contract.ProgressBucket)
	}
	return kv, err
}
