package projector

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetproj/jetproj/internal/derived"
)

// Record is what is stored per partition: its position and state, and when
// it failed too often, why it is parked.
type Record struct {
	Key string `json:"key"`
	// Subject is the subject of the partition's messages (aggregate
	// sources), used to read them alone with direct get.
	Subject string `json:"subject,omitempty"`
	// Seq is the stream sequence of the last message the partition handled
	// (applied or skipped): its position.
	Seq uint64 `json:"seq"`
	// Position is the event store position of that message, when known.
	Position int64           `json:"position,omitempty"`
	State    json.RawMessage `json:"state,omitempty"`
	Parked   *Parked         `json:"parked,omitempty"`
	// Behind is set while the partition has messages after Seq that the
	// stream's consumer has passed: they are read with direct get.
	Behind bool `json:"behind,omitempty"`
	// Failing describes the last failure of a partition that is retrying.
	Failing *Parked `json:"failing,omitempty"`
	// Tenant is the tenant whose database holds the record (TenantStore).
	Tenant string `json:"tenant,omitempty"`
	// Skip is the sequence of a message an operator chose to skip.
	Skip uint64 `json:"skip,omitempty"`
	// Emitted counts the events the partition emitted: the sequence of its
	// derived events.
	Emitted uint64 `json:"emitted,omitempty"`
	// Replay is the sequence up to which the partition replays what it had
	// seen before `rebuild --partition`: events derived while handling
	// those messages are not emitted again.
	Replay uint64 `json:"replay,omitempty"`
	// Outbox holds the derived events of a partition whose state lives in
	// KV, written with the state they derive from: the projector publishes
	// them after the write (Pending). Published ones may stay until the
	// record is written again; publishing skips what the stream holds.
	Outbox  []Pending `json:"outbox,omitempty"`
	Updated time.Time `json:"updated"`
	// Revision is the store's revision of the record, for compare-and-set;
	// it is not stored in the value.
	Revision uint64 `json:"-"`
}

// Pending is a derived event stored in its partition's record.
type Pending struct {
	Generation int             `json:"gen"`
	Seq        uint64          `json:"seq"`
	Type       string          `json:"type"`
	Payload    json.RawMessage `json:"payload"`
	// LinkTo is the one linked stream of records written before Links.
	LinkTo         string `json:"link,omitempty"`
	SourceSeq      uint64 `json:"source_seq"`
	SourcePosition int64  `json:"source_position,omitempty"`
	TraceParent    string `json:"traceparent,omitempty"`
	// Links are the streams the event is linked to; LinkOnly leaves the
	// projection's own stream out.
	Links    []derived.Link `json:"links,omitempty"`
	LinkOnly bool           `json:"link_only,omitempty"`
	// Metadata is the event's metadata: the source event's, carried over,
	// and its own (projection.Metadata).
	Metadata map[string]string `json:"meta,omitempty"`
	// CausationID is the source event's id.
	CausationID string `json:"causation,omitempty"`
}

// links are the streams e is linked to, a record's older LinkTo included.
func (e Pending) links() []derived.Link {
	if e.LinkTo == "" {
		return e.Links
	}
	return append([]derived.Link{{Stream: e.LinkTo}}, e.Links...)
}

// textLen is about the bytes e's strings take in a record, payload aside.
func (e Pending) textLen() int {
	n := len(e.Type) + len(e.LinkTo) + len(e.TraceParent) + len(e.CausationID)
	for _, l := range e.Links {
		n += len(l.Stream) + 16
	}
	for k, v := range e.Metadata {
		n += len(k) + len(v) + 4
	}
	return n
}

// Parked tells why a partition stopped.
type Parked struct {
	// Seq is the sequence of the failing message.
	Seq       uint64    `json:"seq"`
	Position  int64     `json:"position,omitempty"`
	EventType string    `json:"event_type"`
	Error     string    `json:"error"`
	Attempts  int       `json:"attempts"`
	Since     time.Time `json:"since"`
}

// StateStore keeps partitions' records and slot watermarks. Every
// implementation must pass the behaviour suite in package storetest.
type StateStore interface {
	// Init prepares the storage (idempotent).
	Init(ctx context.Context) error
	// LoadSlot returns every record of the slot and its watermark: the
	// stream sequence up to which every message of the slot was handled.
	LoadSlot(ctx context.Context, slot int) (records []Record, watermark uint64, err error)
	// Fence records that token now owns slot; commits with an older
	// token fail with ErrFenced from then on. Tokens only grow.
	Fence(ctx context.Context, slot int, token uint64) error
	// Begin starts a batch. For transactional stores Tx is the
	// transaction handlers write the read model with.
	Begin(ctx context.Context) (Batch, error)
	// Reset deletes every record and watermark.
	Reset(ctx context.Context) error
	// Get reads one record (nil when absent).
	Get(ctx context.Context, slot int, key string) (*Record, error)
	// Summary returns the parked records and the number of records.
	Summary(ctx context.Context) (parked []Record, partitions int, err error)
}

// Batch is one commit.
type Batch interface {
	// Tx is the transaction handlers write with; nil for stores without one.
	Tx() pgx.Tx
	// Savepoint marks a point a failing partition's writes roll back to.
	Savepoint(ctx context.Context) error
	// RollbackToSavepoint undoes the writes since the last Savepoint.
	RollbackToSavepoint(ctx context.Context) error
	// Put stores a record with compare-and-set on its Revision, fenced by
	// the slot's token.
	Put(slot int, token uint64, r Record)
	// Watermark records a slot's watermark.
	Watermark(slot int, token uint64, seq uint64)
	// Commit writes everything atomically per record (and atomically in all
	// for transactional stores). It returns the new revisions by key.
	// ErrFenced (wrapped, with the slots) when a slot was taken over.
	Commit(ctx context.Context) (map[string]uint64, error)
	// Rollback abandons the batch.
	Rollback(ctx context.Context)
}

// Capabilities tell the runtime how a store commits. A store that does not
// report them (no Capabilities method) gets the zero value: the safest.
type Capabilities struct {
	// Transactional: a Commit that fails wrote nothing, so the runtime may
	// apply the batch again to find the partition that made it fail. A
	// store without it reports, with a failed Commit, the revisions of the
	// records it did write.
	Transactional bool
	// RecordOutbox: derived events ride in the records (Record.Outbox) and
	// the projector publishes them after the write. Without it, a
	// projection that emits needs Begin to return an OutboxBatch.
	RecordOutbox bool
	// WriteBehind: records may wait in memory and be written later, once
	// per StateWriteInterval, while the projection catches up.
	WriteBehind bool
}

// CapableStore is a StateStore that reports its Capabilities.
type CapableStore interface {
	StateStore
	Capabilities() Capabilities
}

// capabilitiesOf is what s can do.
func capabilitiesOf(s StateStore) Capabilities {
	if c, ok := s.(CapableStore); ok {
		return c.Capabilities()
	}
	return Capabilities{}
}

// RecordChecker is a StateStore that can tell, before a commit, that it
// would refuse a record (too large, a value it cannot keep): that partition
// fails alone instead of the batch.
type RecordChecker interface {
	CheckRecord(r Record) error
}

// QueueBatch is a Batch that takes the statements handlers queue
// (projection.Context.Exec) and sends them with the commit.
type QueueBatch interface {
	Batch
	Queue(sql string, args ...any)
	// SendQueued sends the statements queued since the last Savepoint
	// now. The runtime calls it after each partition when it looks for the
	// partition whose statement failed a commit; a refused statement is a
	// *StatementError.
	SendQueued(ctx context.Context) error
}

// OutboxEntry is a derived event waiting in the outbox for the emitter.
type OutboxEntry struct {
	Projection string
	Partition  string
	// Subject is where the emitter publishes it: project.<name>.<partition>.
	Subject string
	// MsgID is its deterministic Nats-Msg-Id.
	MsgID string
	// Generation is the projection's generation (reset and rebuild start a
	// new one); Seq is the event's place among the partition's derived
	// events of that generation, from 1.
	Generation int
	Seq        uint64
	EventType  string
	Payload    []byte
	// LinkTo names a stream it is also published to (older form of
	// Links: both are stored as Links).
	LinkTo string
	// Links are the streams it is linked to; with LinkOnly it is not
	// published on the projection's own stream.
	Links          []derived.Link
	LinkOnly       bool
	SourceSeq      uint64
	SourcePosition int64
	// TraceParent continues the source event's trace (W3C), if it had one.
	TraceParent string
	// Metadata is sent as Meta-* headers: the source event's, carried
	// over, and the emission's own. CausationID is the source event's id.
	Metadata    map[string]string
	CausationID string
}

// links are the streams e is linked to, LinkTo included.
func (e OutboxEntry) links() []derived.Link {
	if e.LinkTo == "" {
		return e.Links
	}
	return append([]derived.Link{{Stream: e.LinkTo}}, e.Links...)
}

// OutboxBatch is a Batch that can store derived events with the read
// model, atomically.
type OutboxBatch interface {
	Batch
	Emit(ctx context.Context, entries []OutboxEntry) error
}

// TenantBatch is a Batch that writes to one database per tenant: Use picks
// the tenant before a partition's writes.
type TenantBatch interface {
	Batch
	Use(ctx context.Context, tenant string) error
}

// maxKVKeyToken bounds the part of a KV key that names a partition. The
// key is a subject ($KV.<bucket>.p.<slot>.<token>), and a subject longer
// than the server's control line (4 KiB by default) closes the connection:
// one event with a long aggregate id would take the projector offline.
const maxKVKeyToken = 200

// kvKeyToken turns a partition key into KV-key characters: letters, digits,
// '-', '_' and '/' stay; every other byte becomes =XX. A token longer than
// maxKVKeyToken keeps a readable head and ends in "=H" and 32 hex digits of
// the key's SHA-256 ("=H" is never an escape); the record holds the key.
func kvKeyToken(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '/':
			b.WriteByte(c)
		default:
			b.WriteString("=" + strings.ToUpper(strconv.FormatUint(uint64(c)|0x100, 16)[1:]))
		}
		if b.Len() > maxKVKeyToken {
			break
		}
	}
	if b.Len() == 0 {
		return "="
	}
	tok := b.String()
	if len(tok) <= maxKVKeyToken {
		return tok
	}
	head := tok[:maxKVKeyToken-34]
	if i := strings.LastIndexByte(head, '='); i >= 0 && i > len(head)-3 {
		head = head[:i] // not inside an escape
	}
	sum := sha256.Sum256([]byte(key))
	return head + "=H" + hex.EncodeToString(sum[:16])
}

// storedString is how stores keep a partition key, subject or tenant
// (derived.StoredString: unchanged, or encoded when it is not valid UTF-8
// or holds NUL); loadedString reverses it.
func storedString(s string) string { return derived.StoredString(s) }

// loadedString is the string storedString stored as s.
func loadedString(s string) string { return derived.LoadedString(s) }

// storedRecord is r with its strings as a store keeps them.
func storedRecord(r Record) Record {
	r.Key, r.Subject, r.Tenant = storedString(r.Key), storedString(r.Subject), storedString(r.Tenant)
	return r
}

// loadedRecord reverses storedRecord.
func loadedRecord(r *Record) {
	r.Key, r.Subject, r.Tenant = loadedString(r.Key), loadedString(r.Subject), loadedString(r.Tenant)
}
