package projector

import (
	"hash/maphash"
	"math/bits"
	"time"
	"unsafe"

	"github.com/jetproj/jetproj/pkg/projection"
)

// part is a partition of an owned slot, in memory. A replica may know
// millions of partitions, so a part is small (64 bytes) and holds its key
// and state in one allocation; what most partitions never need (a subject
// that cannot be derived from the key, failures, a tenant) lives in x.
type part struct {
	kv    string // the key, then the stored state (JSON)
	seq   uint64
	pos   int64
	rev   uint64
	emit  uint64 // derived events so far
	x     *partExtra
	klen  uint32
	slot  uint16
	dirty bool // the record in memory is ahead of the store (write-behind); rev is still the stored revision
}

type partExtra struct {
	subject string
	parked  *Parked
	failing *Parked
	behind  bool
	skip    uint64
	replay  uint64 // Record.Replay
	tenant  string
	fail    *failure
	outbox  []Pending // derived events stored with the state, maybe not yet published
}

// maxKeyLen bounds partition keys (klen is 32 bits; keys are subject tokens).
const maxKeyLen = 1 << 16

func newPart(slot int, key string) *part {
	return &part{kv: key, klen: uint32(len(key)), slot: uint16(slot)}
}

func (p *part) key() string { return p.kv[:p.klen] }

// state is the stored state. It shares the part's memory: never modify it.
func (p *part) state() []byte {
	s := p.kv[p.klen:]
	if s == "" {
		return nil
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

func (p *part) failure() *failure {
	if p.x == nil {
		return nil
	}
	return p.x.fail
}

func (p *part) setFailure(f *failure) {
	switch {
	case p.x != nil:
		p.x.fail = f
		if f == nil && p.x.empty() {
			p.x = nil
		}
	case f != nil:
		p.x = &partExtra{fail: f}
	}
}

func (x *partExtra) empty() bool {
	return x.subject == "" && x.parked == nil && x.failing == nil && !x.behind && x.skip == 0 && x.replay == 0 && x.tenant == "" && x.fail == nil && len(x.outbox) == 0
}

// record expands the partition into its stored form.
func (p *part) record() Record {
	r := Record{Key: p.key(), Seq: p.seq, Position: p.pos, State: p.state(), Revision: p.rev, Emitted: p.emit}
	if x := p.x; x != nil {
		r.Subject, r.Parked, r.Failing, r.Behind, r.Skip, r.Tenant, r.Outbox = x.subject, x.parked, x.failing, x.behind, x.skip, x.tenant, x.outbox
		r.Replay = x.replay
	}
	return r
}

func (p *part) parked() *Parked {
	if p.x == nil {
		return nil
	}
	return p.x.parked
}

// setRecord stores rec compactly (rec.Subject empty when the key implies
// it). The failure (in memory only) is kept.
func (p *part) setRecord(rec Record) {
	if rec.Key != p.key() || string(rec.State) != p.kv[p.klen:] {
		p.kv, p.klen = rec.Key+string(rec.State), uint32(len(rec.Key))
	}
	p.seq, p.pos, p.rev, p.emit = rec.Seq, rec.Position, rec.Revision, rec.Emitted
	fail := p.failure()
	if rec.Subject == "" && rec.Parked == nil && rec.Failing == nil && !rec.Behind && rec.Skip == 0 && rec.Replay == 0 && rec.Tenant == "" && fail == nil && len(rec.Outbox) == 0 {
		p.x = nil
		return
	}
	p.x = &partExtra{subject: rec.Subject, parked: rec.Parked, failing: rec.Failing, behind: rec.Behind, skip: rec.Skip, replay: rec.Replay, tenant: rec.Tenant, fail: fail,
		outbox: rec.Outbox}
}

// partTable is a slot's partitions by key: an open-addressing hash table of
// pointers (8 bytes a bucket, at most 3/4 full), a quarter of what a Go map
// of string to pointer takes.
type partTable struct {
	seed    maphash.Seed
	buckets []*part
	n       int
}

func newPartTable(hint int) *partTable {
	t := &partTable{seed: maphash.MakeSeed()}
	t.buckets = make([]*part, tableSize(hint))
	return t
}

func tableSize(n int) int {
	size := 8
	if n > 0 {
		size = max(size, 1<<bits.Len(uint(n*4/3)))
	}
	return size
}

func (t *partTable) len() int { return t.n }

func (t *partTable) home(key string) int {
	return int(maphash.String(t.seed, key) & uint64(len(t.buckets)-1))
}

func (t *partTable) get(key string) *part {
	mask := len(t.buckets) - 1
	for i := t.home(key); ; i = (i + 1) & mask {
		p := t.buckets[i]
		if p == nil {
			return nil
		}
		if p.key() == key {
			return p
		}
	}
}

// put adds p, or replaces the part with its key.
func (t *partTable) put(p *part) {
	if (t.n+1)*4 > len(t.buckets)*3 {
		t.grow()
	}
	key := p.key()
	mask := len(t.buckets) - 1
	for i := t.home(key); ; i = (i + 1) & mask {
		q := t.buckets[i]
		if q == nil {
			t.buckets[i] = p
			t.n++
			return
		}
		if q.key() == key {
			t.buckets[i] = p
			return
		}
	}
}

func (t *partTable) grow() {
	old := t.buckets
	t.buckets, t.n = make([]*part, 2*len(old)), 0
	for _, p := range old {
		if p != nil {
			t.put(p)
		}
	}
}

// all calls f for every part.
func (t *partTable) all(f func(*part)) {
	for _, p := range t.buckets {
		if p != nil {
			f(p)
		}
	}
}

// failure is a partition's retry state.
type failure struct {
	retrying bool // global: the consumer re-reads from the position
	fetching bool // its messages are being read off the loop
	// limit is the last sequence the read in flight covers; live messages
	// of the partition after it are held for the read's batch (held), up
	// to a batch of them (overflow: read again instead).
	limit    uint64
	held     []projection.Meta
	overflow bool
	attempts int
	next     time.Time
	err      string
	seq      uint64
	typ      string
	pos      int64
}
