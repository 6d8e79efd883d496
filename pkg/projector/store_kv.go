package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	jsonv1 "github.com/go-json-experiment/json/v1" // encoding/json's behaviour, decoding ~2.5× faster

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/contract"
)

// KVStore keeps records in a JetStream KV bucket: key p.<slot>.<key> holds a
// partition, w.<slot> a slot's watermark, f.<slot> its fence token. Writes
// are pipelined compare-and-set publishes.
type KVStore struct {
	js       jetstream.JetStream
	bucket   string
	replicas int
	kv       jetstream.KeyValue

	// marks holds, per slot this store fenced, the revision of the slot's
	// watermark key as this owner last wrote it: watermark writes expect
	// it, so a previous owner still running cannot move the watermark once
	// a new owner has claimed the key (see Fence).
	mu    sync.Mutex
	marks map[int]uint64
}

var _ StateStore = (*KVStore)(nil)

// Capabilities implements CapableStore.
func (s *KVStore) Capabilities() Capabilities {
	return Capabilities{RecordOutbox: true, WriteBehind: true}
}

// NewKVStore returns a store in bucket (created by Init).
func NewKVStore(js jetstream.JetStream, bucket string, replicas int) *KVStore {
	if replicas < 1 {
		replicas = 1
	}
	return &KVStore{js: js, bucket: bucket, replicas: replicas}
}

// Init creates the bucket.
func (s *KVStore) Init(ctx context.Context) error {
	kv, err := s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: s.bucket, History: 1, Replicas: s.replicas, Storage: jetstream.FileStorage,
		Description: "jetproj projection positions and state",
	})
	if err != nil {
		return fmt.Errorf("projector: state bucket %s: %w", s.bucket, err)
	}
	s.kv = kv
	return nil
}

func (s *KVStore) bucketKV(ctx context.Context) (jetstream.KeyValue, error) {
	if s.kv != nil {
		return s.kv, nil
	}
	kv, err := s.js.KeyValue(ctx, s.bucket)
	if err != nil {
		return nil, fmt.Errorf("projector: state bucket %s: %w", s.bucket, err)
	}
	s.kv = kv
	return kv, nil
}

func partKey(slot int, key string) string { return "p." + strconv.Itoa(slot) + "." + kvKeyToken(key) }

// LoadSlot reads the slot's records with one ordered pull consumer (the
// last message of each of its keys). Pulling keeps what waits in the client
// to a few hundred records: a push watch would buffer up to 64 MB per slot
// when decoding is slower than delivery.
func (s *KVStore) LoadSlot(ctx context.Context, slot int) ([]Record, uint64, error) {
	kv, err := s.bucketKV(ctx)
	if err != nil {
		return nil, 0, err
	}
	var wm uint64
	if e, err := kv.Get(ctx, "w."+strconv.Itoa(slot)); err == nil {
		wm, _ = strconv.ParseUint(string(e.Value()), 10, 64)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, err
	}
	prefix := contract.KVSubjectPrefix(s.bucket)
	cons, err := s.js.OrderedConsumer(ctx, contract.KVStream(s.bucket), jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{prefix + "p." + strconv.Itoa(slot) + ".>"},
		DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
		InactiveThreshold: 10 * time.Second,
	})
	if err != nil {
		return nil, 0, fmt.Errorf("projector: load slot %d: %w", slot, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("projector: load slot %d: %w", slot, err)
	}
	// Consumers count against the stream's and the account's limits: do
	// not leave one per load behind until it times out.
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = s.js.DeleteConsumer(dctx, contract.KVStream(s.bucket), cons.CachedInfo().Name)
		cancel()
	}()
	if info.NumPending == 0 {
		return nil, wm, nil
	}
	out := make([]Record, 0, info.NumPending)
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return nil, 0, fmt.Errorf("projector: load slot %d: %w", slot, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			return nil, 0, fmt.Errorf("projector: load slot %d: %w", slot, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return nil, 0, err
		}
		if op := m.Headers().Get("KV-Operation"); op != "DEL" && op != "PURGE" {
			var r Record
			if err := jsonv1.Unmarshal(m.Data(), &r); err != nil {
				return nil, 0, fmt.Errorf("projector: record %s: %w", m.Subject(), err)
			}
			loadedRecord(&r)
			r.Revision = md.Sequence.Stream
			if m.Subject() != prefix+partKey(slot, r.Key) {
				// Written under a key of an earlier version (long keys
				// were not hashed): the next write creates the current
				// key, and that later record wins over this one.
				r.Revision = 0
			}
			out = append(out, r)
		}
		if md.NumPending == 0 {
			return out, wm, nil
		}
	}
}

// Get reads one record.
func (s *KVStore) Get(ctx context.Context, slot int, key string) (*Record, error) {
	kv, err := s.bucketKV(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, partKey(slot, key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := jsonv1.Unmarshal(e.Value(), &r); err != nil {
		return nil, err
	}
	loadedRecord(&r)
	r.Revision = e.Revision()
	return &r, nil
}

// Fence stores the slot's token (a token only grows) and claims the slot's
// watermark for this store (claimWatermark).
func (s *KVStore) Fence(ctx context.Context, slot int, token uint64) error {
	kv, err := s.bucketKV(ctx)
	if err != nil {
		return err
	}
	key := "f." + strconv.Itoa(slot)
	for range 10 {
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = kv.Create(ctx, key, []byte(strconv.FormatUint(token, 10)))
		case err != nil:
			return err
		default:
			cur, _ := strconv.ParseUint(string(e.Value()), 10, 64)
			if cur >= token {
				if cur > token {
					return &FencedError{Slots: []int{slot}}
				}
				return s.claimWatermark(ctx, kv, slot)
			}
			_, err = kv.Update(ctx, key, []byte(strconv.FormatUint(token, 10)), e.Revision())
		}
		if err == nil {
			return s.claimWatermark(ctx, kv, slot)
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return err
		}
	}
	return fmt.Errorf("projector: fence slot %d: too much contention", slot)
}

// claimWatermark writes the slot's watermark again, unchanged, and keeps
// the revision: from then on a previous owner's watermark write (which
// expects the revision it wrote) is refused, and this owner's writes expect
// the new one. Records need no such claim: each is written with
// compare-and-set on its own revision.
func (s *KVStore) claimWatermark(ctx context.Context, kv jetstream.KeyValue, slot int) error {
	key := "w." + strconv.Itoa(slot)
	for range 10 {
		var rev uint64
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rev, err = kv.Create(ctx, key, []byte("0"))
		case err != nil:
			return fmt.Errorf("projector: claim watermark of slot %d: %w", slot, err)
		default:
			rev, err = kv.Update(ctx, key, e.Value(), e.Revision())
		}
		if err == nil {
			s.mu.Lock()
			if s.marks == nil {
				s.marks = map[int]uint64{}
			}
			s.marks[slot] = rev
			s.mu.Unlock()
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("projector: claim watermark of slot %d: %w", slot, err)
		}
	}
	return fmt.Errorf("projector: claim watermark of slot %d: too much contention", slot)
}

// markRev is the revision this owner's next watermark write of slot
// expects; ok is false when this store never fenced the slot.
func (s *KVStore) markRev(slot int) (rev uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rev, ok = s.marks[slot]
	return rev, ok
}

func (s *KVStore) setMarkRev(slot int, rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.marks[slot]; ok {
		s.marks[slot] = rev
	}
}

// Reset purges the bucket.
func (s *KVStore) Reset(ctx context.Context) error {
	st, err := s.js.Stream(ctx, contract.KVStream(s.bucket))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return st.Purge(ctx)
}

// Delete removes the bucket.
func (s *KVStore) Delete(ctx context.Context) error {
	err := s.js.DeleteKeyValue(ctx, s.bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil
	}
	s.kv = nil
	return err
}

// Summary lists parked records and counts partitions.
func (s *KVStore) Summary(ctx context.Context) ([]Record, int, error) {
	kv, err := s.bucketKV(ctx)
	if err != nil {
		return nil, 0, err
	}
	w, err := kv.Watch(ctx, "p.>", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, 0, err
	}
	defer w.Stop() //nolint:errcheck
	var parked []Record
	n := 0
	for e := range w.Updates() {
		if e == nil {
			break
		}
		n++
		if strings.Contains(string(e.Value()), `"parked"`) {
			var r Record
			if json.Unmarshal(e.Value(), &r) == nil && r.Parked != nil {
				loadedRecord(&r)
				r.Revision = e.Revision()
				parked = append(parked, r)
			}
		}
	}
	return parked, n, nil
}

type kvBatch struct {
	s      *KVStore
	puts   []kvPut
	marks  map[int]uint64
	tokens map[int]uint64
}

type kvPut struct {
	slot int
	rec  Record
}

// Begin starts a batch.
func (s *KVStore) Begin(ctx context.Context) (Batch, error) {
	if _, err := s.bucketKV(ctx); err != nil {
		return nil, err
	}
	return &kvBatch{s: s, marks: map[int]uint64{}, tokens: map[int]uint64{}}, nil
}

func (b *kvBatch) Tx() pgx.Tx                                { return nil }
func (b *kvBatch) Savepoint(context.Context) error           { return nil }
func (b *kvBatch) RollbackToSavepoint(context.Context) error { return nil }
func (b *kvBatch) Rollback(context.Context)                  {}

// grow makes room for n more records.
func (b *kvBatch) grow(n int) { b.puts = slices.Grow(b.puts, n) }

func (b *kvBatch) Put(slot int, token uint64, r Record) {
	b.puts = append(b.puts, kvPut{slot, r})
	b.tokens[slot] = token
}
func (b *kvBatch) Watermark(slot int, token uint64, seq uint64) {
	b.marks[slot] = seq
	b.tokens[slot] = token
}

// commitWindow is how many writes a commit keeps unacknowledged: a
// write-behind flush may hold a million records, more than a connection
// lets wait.
const commitWindow = 4096

// Commit publishes every record with its expected revision, pipelined, and
// waits for all acknowledgements. The revisions it returns, even with an
// error, are those of the records that were written.
func (b *kvBatch) Commit(ctx context.Context) (map[string]uint64, error) {
	revs := make(map[string]uint64, len(b.puts))
	type pend struct {
		key  string
		slot int
		mark bool
		fut  jetstream.PubAckFuture
	}
	futs := make([]pend, 0, len(b.puts)+len(b.marks))
	waited := 0
	var fenced []int
	var firstErr error
	failed := map[int]bool{} // slots with a record that did not land
	wait := func(p pend) error {
		select {
		case ack := <-p.fut.Ok():
			if p.key != "" {
				revs[p.key] = ack.Sequence
			}
			if p.mark {
				b.s.setMarkRev(p.slot, ack.Sequence)
			}
		case err := <-p.fut.Err():
			failed[p.slot] = true
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
				fenced = append(fenced, p.slot)
			} else if firstErr == nil {
				firstErr = err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	publish := func(subj string, data []byte, key string, slot int, mark bool, opts ...jetstream.PublishOpt) error {
		if len(futs)-waited == commitWindow {
			if err := wait(futs[waited]); err != nil {
				return err
			}
			waited++
		}
		m := nats.NewMsg(subj)
		m.Data = data
		fut, err := b.s.js.PublishMsgAsync(m, opts...)
		if err != nil {
			return fmt.Errorf("projector: write %s: %w", subj, err)
		}
		futs = append(futs, pend{key, slot, mark, fut})
		return nil
	}
	prefix := contract.KVSubjectPrefix(b.s.bucket)
	now := time.Now().UTC()
	for _, p := range b.puts {
		p.rec.Updated = now
		data, err := encodeRecord(storedRecord(p.rec))
		if err != nil {
			return revs, err
		}
		if err := publish(prefix+partKey(p.slot, p.rec.Key), data, p.rec.Key, p.slot, false,
			jetstream.WithExpectLastSequencePerSubject(p.rec.Revision)); err != nil {
			return revs, err
		}
	}
	// A watermark goes out only once every record of its slot has landed:
	// one moved past a refused or lost record would skip that partition's
	// events on the next load. One whose slot this store claimed expects
	// the revision it last wrote.
	for _, p := range futs[waited:] {
		if err := wait(p); err != nil {
			return revs, err
		}
	}
	waited = len(futs)
	for slot, seq := range b.marks {
		if failed[slot] {
			continue
		}
		var opts []jetstream.PublishOpt
		rev, claimed := b.s.markRev(slot)
		if claimed {
			opts = append(opts, jetstream.WithExpectLastSequencePerSubject(rev))
		}
		if err := publish(prefix+"w."+strconv.Itoa(slot), []byte(strconv.FormatUint(seq, 10)), "", slot, claimed, opts...); err != nil {
			return revs, err
		}
	}
	for _, p := range futs[waited:] {
		if err := wait(p); err != nil {
			return revs, err
		}
	}
	if len(fenced) > 0 {
		return revs, &FencedError{Slots: fenced}
	}
	if firstErr != nil {
		return revs, fmt.Errorf("projector: commit: %w", firstErr)
	}
	return revs, nil
}

var _ RecordChecker = (*KVStore)(nil)

// CheckRecord refuses a record larger than a message the server takes
// (its max_payload, 1 MiB by default), less room for the write's headers.
func (s *KVStore) CheckRecord(r Record) error {
	limit := int(s.js.Conn().MaxPayload()) - 1024
	if limit <= 0 {
		return nil
	}
	est := 256 + 6*(len(r.Key)+len(r.Subject)+len(r.Tenant)) + len(r.State)
	for _, e := range r.Outbox {
		est += 128 + 6*e.textLen() + len(e.Payload)
	}
	if est <= limit {
		return nil
	}
	data, err := encodeRecord(storedRecord(r))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStateNotStored, err)
	}
	if len(data) > limit {
		return fmt.Errorf("%w: its record would take %d bytes, more than the %d a KV value may hold here (the server's max_payload)", ErrStateNotStored, len(data), limit)
	}
	return nil
}

// Watermark reads one slot's watermark.
func (s *KVStore) Watermark(ctx context.Context, slot int) (uint64, error) {
	kv, err := s.bucketKV(ctx)
	if err != nil {
		return 0, err
	}
	e, err := kv.Get(ctx, "w."+strconv.Itoa(slot))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(string(e.Value()), 10, 64)
}

// encodeRecord is json.Marshal(r), several times faster for the records
// of healthy partitions, which a catch-up writes by the hundred thousand.
func encodeRecord(r Record) ([]byte, error) {
	if r.Parked != nil || r.Failing != nil || len(r.Outbox) > 0 || !jsonSafe(r.Key) || !jsonSafe(r.Subject) || !jsonSafe(r.Tenant) {
		return json.Marshal(r)
	}
	b := make([]byte, 0, 96+len(r.Key)+len(r.Subject)+len(r.State)+len(r.Tenant))
	b = append(b, `{"key":"`...)
	b = append(b, r.Key...)
	b = append(b, '"')
	if r.Subject != "" {
		b = append(append(append(b, `,"subject":"`...), r.Subject...), '"')
	}
	b = strconv.AppendUint(append(b, `,"seq":`...), r.Seq, 10)
	if r.Position != 0 {
		b = strconv.AppendInt(append(b, `,"position":`...), r.Position, 10)
	}
	if len(r.State) > 0 {
		b = append(append(b, `,"state":`...), r.State...)
	}
	if r.Behind {
		b = append(b, `,"behind":true`...)
	}
	if r.Tenant != "" {
		b = append(append(append(b, `,"tenant":"`...), r.Tenant...), '"')
	}
	if r.Skip != 0 {
		b = strconv.AppendUint(append(b, `,"skip":`...), r.Skip, 10)
	}
	if r.Emitted != 0 {
		b = strconv.AppendUint(append(b, `,"emitted":`...), r.Emitted, 10)
	}
	if r.Replay != 0 {
		b = strconv.AppendUint(append(b, `,"replay":`...), r.Replay, 10)
	}
	b = append(r.Updated.AppendFormat(append(b, `,"updated":"`...), time.RFC3339Nano), `"}`...)
	return b, nil
}

// jsonSafe reports whether s needs no escaping in a JSON string (as
// encoding/json escapes: control characters, quote, backslash, <, >, &).
func jsonSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
