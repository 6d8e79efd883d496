package projection

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	jsonv1 "github.com/go-json-experiment/json/v1" // encoding/json's behaviour, decoding ~2.5× faster

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/projectionrt"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/subject"
)

// GlobalPartition is the key of a global projection's only partition.
const GlobalPartition = "global"

// Event is one event delivered to a handler, with its payload decoded.
type Event[T any] struct {
	Data T
	Meta
}

// Meta describes a delivered message.
type Meta struct {
	// Type is the event type (the Event-Type header).
	Type string
	// Subject of the message.
	Subject string
	// Partition is the key of the partition this event belongs to:
	// "<aggregate_type>/<aggregate_id>" for aggregate sources.
	Partition     string
	AggregateType string
	AggregateID   string
	// Version is the aggregate's version (0 when the source has none).
	Version int64
	// Position is the event store position (0 when the source has none).
	Position int64
	// Sequence is the message's stream sequence: the partition's position.
	Sequence uint64
	// MsgID is the message's Nats-Msg-Id, if it has one: event-<position>
	// for the feeder's events, the derived event's id for a projection's.
	// Derived events name it as their cause (Causation-Id).
	MsgID      string
	RecordedAt time.Time
	Metadata   map[string]string
	// TraceParent is the event's W3C trace context (the traceparent
	// header), if any; handlers' ctx carries the projector's span in it.
	TraceParent string
	// Raw is the undecoded payload.
	Raw []byte
}

// Tenant is the tenant named by the event's metadata ("tenant"), if any.
func (m Meta) Tenant() string { return m.Metadata["tenant"] }

// Context is a handler's view of one partition during a batch.
type Context[S any] struct {
	// State is the partition's state; changes are stored with its position
	// when the batch commits, and discarded when a handler fails.
	State *S
	c     *projectionrt.PartitionContext
}

// Partition is the partition's key.
func (c *Context[S]) Partition() string { return c.c.Key }

// Tx is the batch's PostgreSQL transaction for projections with a Postgres
// sink; writes made with it commit together with the positions. It is nil
// for other projections.
func (c *Context[S]) Tx() pgx.Tx { return c.c.Tx }

// Exec queues a statement (one SQL statement, with $n arguments) into the
// batch's transaction, for projections with a PostgreSQL sink. Queued
// statements are not sent one by one: they travel together, in order, with
// the batch's positions and derived events in the commit's round trip (or
// with the next statement sent through Tx, which sees their effects). So a
// handler that only writes should use Exec; one that must read what is
// stored uses Tx. A queued statement that PostgreSQL refuses fails its
// partition alone, as a handler error does (retried, then parked); the
// other partitions of the batch commit. Without a PostgreSQL sink Exec
// returns ErrNoPostgres.
func (c *Context[S]) Exec(sql string, args ...any) error {
	if c.c.Queue == nil {
		return ErrNoPostgres
	}
	c.c.Queue.Queue(sql, args...)
	return nil
}

// ErrNoPostgres reports Context.Exec in a projection without a PostgreSQL
// sink (Postgres or PostgresPerTenant).
var ErrNoPostgres = errors.New("projection: Exec needs a PostgreSQL sink (projection.Postgres or PostgresPerTenant)")

// Tenant is the tenant of the partition's last delivered event.
func (c *Context[S]) Tenant() string { return c.c.Tenant }

// Emit records a derived event to publish on project.<name>.<partition>
// once the batch commits. Emissions are dropped during rebuilds.
//
// The derived event carries the metadata of the event that caused it (the
// event being handled; in the flush hook, the partition's last event of the
// batch) as Meta-* headers, its id as Causation-Id and its correlation_id
// entry as Correlation-Id. Options add metadata of its own (Metadata)
// and link it to other streams (Link, LinkOnly, LinkExisting). A bad option
// is an error wrapping ErrInvalidEmission, and nothing is recorded.
func (c *Context[S]) Emit(eventType string, payload any, opts ...EmitOption) error {
	return emit(c.c, eventType, payload, "", opts)
}

// LinkTo records a derived event for the named stream as well: it is
// published on the projection's own stream and on stream (created by
// jetproj on first use, subjects <lowercase stream>.>). With LinkOnly it
// goes to stream only; Link adds more streams. It takes Emit's options.
func (c *Context[S]) LinkTo(stream, eventType string, payload any, opts ...EmitOption) error {
	return emit(c.c, eventType, payload, stream, opts)
}

// ErrInvalidEmission is matched by the error of Emit or LinkTo when an
// option, a stream name or a metadata entry cannot be used.
var ErrInvalidEmission = errors.New("projection: invalid emission")

// MaxMetadataKeyLen is the longest metadata key, in bytes once encoded as a
// header name (subject token encoding, as the feeder's Meta-* headers):
// a longer key would be hashed and lost to every reader.
const MaxMetadataKeyLen = subject.MaxTokenLen

// EmitOption is an option of Emit and LinkTo.
type EmitOption func(*emitOptions) error

type emitOptions struct {
	meta     map[string]string
	links    []string
	existing map[string]bool
	linkOnly bool
}

// Metadata gives the derived event metadata of its own, sent as Meta-*
// headers like the feeder's. Its entries win over those carried over from
// the source event. Keys must not be empty and must encode (as a subject
// token: letters, digits, '-' and '_' one byte each, any other byte three)
// into at most MaxMetadataKeyLen bytes; values are any text. The option
// may be given several times.
func Metadata(meta map[string]string) EmitOption {
	return func(o *emitOptions) error {
		for k, v := range meta {
			if err := validMetadataKey(k); err != nil {
				return err
			}
			if o.meta == nil {
				o.meta = make(map[string]string, len(meta))
			}
			o.meta[k] = v
		}
		return nil
	}
}

// validMetadataKey reports whether key can travel as a Meta-* header name
// without being hashed (an error wrapping ErrInvalidEmission if not).
func validMetadataKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty metadata key", ErrInvalidEmission)
	}
	n := 0
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			n++
		default:
			n += 3
		}
	}
	if n > MaxMetadataKeyLen {
		return fmt.Errorf("%w: metadata key %.40q… is %d bytes once encoded, over %d", ErrInvalidEmission, key, n, MaxMetadataKeyLen)
	}
	return nil
}

// Link publishes the derived event to each of streams too (created by
// jetproj on first use, subjects <lowercase stream>.>), once per stream
// however often it is named. A stream that exists and was not created by
// jetproj for links is refused when publishing (see LinkExisting).
func Link(streams ...string) EmitOption {
	return func(o *emitOptions) error {
		for _, s := range streams {
			if err := o.addLink(s); err != nil {
				return err
			}
		}
		return nil
	}
}

// LinkExisting links the derived event to streams that exist already and
// that jetproj did not create — another team's stream, say — whose
// subjects must take <lowercase stream>.<projection>.<partition…>. Naming
// a stream here is the opt-in: without it such a stream is refused
// (derived.ErrNotLinkStream) and left unchanged. jetproj never creates or
// changes these streams; while one is missing, its events wait.
func LinkExisting(streams ...string) EmitOption {
	return func(o *emitOptions) error {
		for _, s := range streams {
			if err := o.addLink(s); err != nil {
				return err
			}
			if o.existing == nil {
				o.existing = map[string]bool{}
			}
			o.existing[s] = true
		}
		return nil
	}
}

// LinkOnly publishes the derived event to its linked streams only, not to
// the projection's own stream. It needs at least one link.
func LinkOnly() EmitOption {
	return func(o *emitOptions) error { o.linkOnly = true; return nil }
}

func (o *emitOptions) addLink(stream string) error {
	if err := subject.ValidName(strings.ToLower(stream)); err != nil {
		return fmt.Errorf("%w: link stream %q: %w", ErrInvalidEmission, stream, err)
	}
	for _, l := range o.links {
		if l == stream {
			return nil
		}
		if strings.EqualFold(l, stream) {
			return fmt.Errorf("%w: link streams %q and %q share their subjects", ErrInvalidEmission, l, stream)
		}
	}
	o.links = append(o.links, stream)
	return nil
}

// emit records a derived event in c (Emit and LinkTo).
func emit(c *projectionrt.PartitionContext, eventType string, payload any, link string, opts []EmitOption) error {
	if eventType == "" {
		return fmt.Errorf("%w: Emit needs an event type", ErrInvalidEmission)
	}
	var o emitOptions
	if link != "" {
		if err := o.addLink(link); err != nil {
			return fmt.Errorf("projection: LinkTo: %w", err)
		}
	}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return fmt.Errorf("projection: emit %s: %w", eventType, err)
		}
	}
	if o.linkOnly && len(o.links) == 0 {
		return fmt.Errorf("projection: emit %s: %w: LinkOnly without a linked stream", eventType, ErrInvalidEmission)
	}
	b, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("projection: emit %s: %w", eventType, err)
	}
	e := projectionrt.Emission{Type: eventType, Payload: b, LinkOnly: o.linkOnly, Metadata: o.meta}
	for _, l := range o.links {
		e.Links = append(e.Links, projectionrt.LinkStream{Stream: l, Existing: o.existing[l]})
	}
	c.Emitted = append(c.Emitted, e)
	return nil
}

// handlerFunc is the untyped form of a handler, which the runtime calls.
type handlerFunc func(ctx context.Context, pc *projectionrt.PartitionContext, m Meta) error

// Hook runs at a lifecycle step; tx is a transaction on the projection's
// database (nil without a Postgres sink).
type Hook func(ctx context.Context, tx pgx.Tx) error

// PartitionHook runs for one partition, e.g. to remove its read-model rows
// before it is rebuilt.
type PartitionHook func(ctx context.Context, tx pgx.Tx, partition string) error

// Definition is a projection without its state's type: what a projector
// runs. Create it with New (a *Projection[S] carries one); add handlers
// with On.
type Definition struct {
	name        string
	source      projectionrt.SourceConfig
	kind        projectionrt.Kind
	mode        projectionrt.Mode
	interval    time.Duration
	batchSize   int
	catchUp     int  // CatchUpBatchSize; 0: the default
	batchSet    bool // BatchSize was given
	maxAttempts int
	backoffMin  time.Duration
	backoffMax  time.Duration
	slots       int
	writeEvery  time.Duration
	pool        *pgxpool.Pool
	tenantPools map[string]*pgxpool.Pool
	postgres    bool // Postgres or PostgresPerTenant was given
	store       any
	// aggStream and aggPrefix are FromStream's.
	aggStream, aggPrefix string
	newState             func() any
	stateType            reflect.Type
	handlers             map[string]handlerFunc
	catchAll             handlerFunc
	flush                func(ctx context.Context, pc *projectionrt.PartitionContext) error
	onInit               Hook
	onReset              Hook
	onDelete             Hook
	onResetPart          PartitionHook
	errs                 []string

	customSource Source
	partitions   PartitionProvider
	manualStart  bool
	notLive      bool
	inline       bool
}

// Projection is a typed definition: handlers see state of type S.
type Projection[S any] struct {
	*Definition
}

// Option configures a definition given to New. Options are named for what
// they choose, From… for a source and On… for a hook.
type Option func(*Definition)

// New defines a projection named name ([a-z0-9_]+) whose partitions carry
// state of type S (use struct{} for none).
func New[S any](name string, opts ...Option) *Projection[S] {
	d := &Definition{
		name:        name,
		batchSize:   500,
		maxAttempts: 5,
		backoffMin:  100 * time.Millisecond,
		backoffMax:  30 * time.Second,
		slots:       64,
		handlers:    map[string]handlerFunc{},
		newState:    func() any { return new(S) },
		stateType:   reflect.TypeFor[S](),
		interval:    time.Second,
		writeEvery:  5 * time.Second,
	}
	if err := subject.ValidName(name); err != nil {
		d.errs = append(d.errs, err.Error())
	}
	for _, o := range opts {
		o(d)
	}
	if len(d.source.AggregateTypes) > 0 {
		// Aggregate sources: the feeder's stream, or FromStream's.
		if d.source.Stream != "" {
			d.errs = append(d.errs, "FromAggregates with FromSubjects: choose one source")
		}
		prefix := contract.EventsPrefix
		d.source.Stream = contract.EventsStream
		if d.aggStream != "" {
			d.source.Stream, prefix = d.aggStream, d.aggPrefix
		}
		for _, t := range d.source.AggregateTypes {
			d.source.Subjects = append(d.source.Subjects, prefix+"."+subject.EncodeToken(t)+".*")
		}
	} else if d.aggStream != "" {
		d.errs = append(d.errs, "FromStream names the stream of FromAggregates, which is missing")
	}
	if d.source.Stream == "" && len(d.source.Subjects) == 0 && d.customSource == nil {
		d.errs = append(d.errs, "no source: use FromAggregates, FromSubjects or FromSource")
	}
	if d.kind == projectionrt.Global {
		d.slots = 1
	}
	return &Projection[S]{d}
}

// FromAggregates reads the feeder's stream EVENTS for the given aggregate
// types (pushed to the server as subject filters events.<type>.*), or the
// stream and subject prefix FromStream names. The partition of an event is
// its aggregate.
func FromAggregates(types ...string) Option {
	return func(d *Definition) {
		for _, t := range types {
			if t == "" {
				d.errs = append(d.errs, "FromAggregates: empty aggregate type")
				continue
			}
			d.source.AggregateTypes = append(d.source.AggregateTypes, t)
		}
	}
}

// FromStream makes FromAggregates read another feeder's stream, whose
// subjects are <subjectPrefix>.<aggregate_type>.<aggregate_id> (a feeder
// with FEEDER_STREAM and FEEDER_SUBJECT_PREFIX set), in either order of the
// options.
func FromStream(stream, subjectPrefix string) Option {
	return func(d *Definition) {
		if stream == "" {
			d.errs = append(d.errs, "FromStream: empty stream name")
		}
		if err := subject.ValidPrefix(subjectPrefix); err != nil {
			d.errs = append(d.errs, fmt.Sprintf("FromStream: subject prefix %q: %v", subjectPrefix, err))
		}
		d.aggStream, d.aggPrefix = stream, subjectPrefix
	}
}

// FromSubjects streams from any JetStream subjects of stream — an external
// "orders.>" or another projection's "project.wallet_balance.>". By default
// the partition key is the subject without its first two tokens (for
// project.<name>.<partition…> that is the emitting partition); use
// PartitionBy to choose another.
func FromSubjects(stream string, subjects ...string) Option {
	return func(d *Definition) {
		d.source.Stream = stream
		d.source.Subjects = append(d.source.Subjects, subjects...)
		if stream == "" || len(subjects) == 0 {
			d.errs = append(d.errs, "FromSubjects needs a stream and at least one subject")
		}
		if d.source.PartitionKey == nil {
			d.source.PartitionKey = defaultPartitionKey
		}
	}
}

func defaultPartitionKey(subj string) string {
	toks := strings.SplitN(subj, ".", 3)
	if len(toks) < 3 {
		return subj
	}
	return toks[2]
}

// PartitionBy sets how a streaming source's subjects map to partitions.
func PartitionBy(f func(subject string) string) Option {
	return func(d *Definition) { d.source.PartitionKey = f }
}

// Global makes the projection global: one partition, every event in
// stream order, one active replica.
func Global() Option { return func(d *Definition) { d.kind = projectionrt.Global; d.slots = 1 } }

// BatchSize sets how many messages a batch takes at most while the
// projection follows the head of its source (default 500, at most
// 100,000). Given alone, it bounds catch-up batches too.
func BatchSize(n int) Option {
	return func(d *Definition) {
		if n < 1 || n > maxBatchSize {
			d.errs = append(d.errs, fmt.Sprintf("BatchSize %d: want 1 to %d", n, maxBatchSize))
		}
		d.batchSize, d.batchSet = n, true
	}
}

// CatchUpBatchSize sets how many messages a batch takes at most while the
// projection is far behind its source (a backlog, a rebuild): larger
// batches mean fewer commits, flushes and derived events per partition.
// The default is 8 × the default BatchSize (4,000), or BatchSize when only
// that was given; at most 100,000. A batch also stops at 8 MiB of payload.
func CatchUpBatchSize(n int) Option {
	return func(d *Definition) {
		if n < 1 || n > maxBatchSize {
			d.errs = append(d.errs, fmt.Sprintf("CatchUpBatchSize %d: want 1 to %d", n, maxBatchSize))
		}
		d.catchUp = n
	}
}

// maxBatchSize bounds BatchSize and CatchUpBatchSize.
const maxBatchSize = 100_000

// Polling runs the projection on an interval instead of per event.
func Polling(interval time.Duration) Option {
	return func(d *Definition) {
		if interval <= 0 {
			d.errs = append(d.errs, "Polling: interval must be positive")
		}
		d.mode, d.interval = projectionrt.Polling, interval
	}
}

// Retries sets how often a failing partition is tried (default 5) before it
// is parked, and the backoff between tries (default 100ms doubling to 30s).
func Retries(maxAttempts int, backoffMin, backoffMax time.Duration) Option {
	return func(d *Definition) {
		if maxAttempts < 1 || backoffMin <= 0 || backoffMax < backoffMin {
			d.errs = append(d.errs, "Retries: want maxAttempts ≥ 1 and 0 < backoffMin ≤ backoffMax")
		}
		d.maxAttempts, d.backoffMin, d.backoffMax = maxAttempts, backoffMin, backoffMax
	}
}

// StateWriteInterval sets how often a projection whose partitions live in
// the KV bucket (no Postgres sink) writes a partition's record while it is
// behind its source (default 5s). While whole batches wait behind the one
// being handled — catching up, rebuilding — the projector keeps changed
// partitions in memory and writes each one once per interval, and at once
// when it reaches the head of the stream: a partition that sees ten events
// in that time is written once, not ten times. Records carry their
// positions, so after a crash the events since the last write are read
// again and applied once. Live batches are written as they are handled.
// 0 writes every batch.
func StateWriteInterval(d time.Duration) Option {
	return func(def *Definition) {
		if d < 0 {
			def.errs = append(def.errs, fmt.Sprintf("StateWriteInterval %s: want ≥ 0", d))
		}
		def.writeEvery = d
	}
}

// Slots sets the number of hash slots partitions are spread over; replicas
// own slots (default 64). Changing it needs a rebuild.
func Slots(n int) Option {
	return func(d *Definition) {
		if n < 1 || n > 4096 {
			d.errs = append(d.errs, fmt.Sprintf("Slots %d: want 1..4096", n))
		}
		d.slots = n
	}
}

// Postgres makes handlers write their read model in pool's database: each
// batch runs in one transaction (Context.Tx) that also stores the
// partitions' positions and state, so effects are exactly once.
func Postgres(pool *pgxpool.Pool) Option {
	return func(d *Definition) { d.pool, d.postgres = pool, true }
}

// PostgresPerTenant routes each tenant (the "tenant" metadata entry of an
// event) to its own database: a partition's read-model writes, position and
// state go to its tenant's database, in one transaction there, so one
// tenant's read model never sees another's events. An event whose tenant is
// missing or unknown fails its partition (it is parked with the error).
func PostgresPerTenant(pools map[string]*pgxpool.Pool) Option {
	return func(d *Definition) {
		if len(pools) == 0 {
			d.errs = append(d.errs, "PostgresPerTenant: no tenants")
		}
		d.tenantPools, d.postgres = pools, true
	}
}

// CustomStore keeps the projection's positions and state in store, which
// must implement projector.StateStore (and pass the suite in package
// projector/storetest); the projector refuses the projection otherwise.
// It replaces the built-in choice (PostgreSQL with Postgres, a KV bucket
// without). What the store can do — commit atomically, keep derived
// events with the records, write behind — it tells through
// projector.Capabilities.
func CustomStore(store any) Option {
	return func(d *Definition) {
		if store == nil {
			d.errs = append(d.errs, "CustomStore needs a store")
		}
		d.store = store
	}
}

// ManualStart deploys the projection without starting it: replicas wait
// until `projector start <name>`.
func ManualStart() Option { return func(d *Definition) { d.manualStart = true } }

// NotLive deploys the projection without emission (blue-green: a new
// version catches up beside the old one); `projector live <name>` switches
// it live, after which it emits for new events only.
func NotLive() Option { return func(d *Definition) { d.notLive = true } }

// OnInit runs when the projection is initialised (idempotent: create
// tables IF NOT EXISTS).
func OnInit(h Hook) Option { return func(d *Definition) { d.onInit = h } }

// OnReset runs when the projection is reset or rebuilt: remove the read
// model's rows.
func OnReset(h Hook) Option { return func(d *Definition) { d.onReset = h } }

// OnDelete runs when the projection is deleted: drop the read model.
func OnDelete(h Hook) Option { return func(d *Definition) { d.onDelete = h } }

// OnResetPartition runs before one partition is rebuilt: remove its rows.
func OnResetPartition(h PartitionHook) Option { return func(d *Definition) { d.onResetPart = h } }

// eventTypeOf names the event type of T: its EventType() method if it has
// one, otherwise the type's name.
func eventTypeOf[T any]() string {
	var zero T
	if n, ok := any(zero).(interface{ EventType() string }); ok {
		return n.EventType()
	}
	if n, ok := any(&zero).(interface{ EventType() string }); ok {
		return n.EventType()
	}
	return reflect.TypeFor[T]().Name()
}

// On adds a handler for events whose type is T's name (or T's EventType()
// method). The payload is decoded into T once; a payload that does not
// decode is a handler error with the event named.
func On[S, T any](p *Projection[S], h func(ctx context.Context, c *Context[S], e Event[T]) error) {
	OnType(p, eventTypeOf[T](), h)
}

// OnType adds a handler for the named event type.
func OnType[S, T any](p *Projection[S], eventType string, h func(ctx context.Context, c *Context[S], e Event[T]) error) {
	if _, dup := p.handlers[eventType]; dup {
		p.errs = append(p.errs, fmt.Sprintf("two handlers for event type %q", eventType))
	}
	p.handlers[eventType] = func(ctx context.Context, pc *projectionrt.PartitionContext, m Meta) error {
		e := Event[T]{Meta: m}
		if len(m.Raw) > 0 {
			if err := jsonv1.Unmarshal(m.Raw, &e.Data); err != nil {
				return &DecodeError{EventType: m.Type, Sequence: m.Sequence, Err: err}
			}
		}
		return h(ctx, &Context[S]{State: pc.State.(*S), c: pc}, e)
	}
}

// OnAny adds a handler for every event type that has no handler of its own.
func OnAny[S any](p *Projection[S], h func(ctx context.Context, c *Context[S], m Meta) error) {
	p.catchAll = func(ctx context.Context, pc *projectionrt.PartitionContext, m Meta) error {
		return h(ctx, &Context[S]{State: pc.State.(*S), c: pc}, m)
	}
}

// OnFlush sets a hook that runs once per partition per batch, after its
// handlers: the place to emit one summarising event per batch.
func OnFlush[S any](p *Projection[S], h func(ctx context.Context, c *Context[S]) error) {
	p.flush = func(ctx context.Context, pc *projectionrt.PartitionContext) error {
		return h(ctx, &Context[S]{State: pc.State.(*S), c: pc})
	}
}

// DecodeError reports a payload that does not decode into the handler's
// event type.
type DecodeError struct {
	EventType string
	Sequence  uint64
	Err       error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("projection: event %s at sequence %d: payload does not decode: %v", e.EventType, e.Sequence, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// ErrInvalid is matched by the error of Validate.
var ErrInvalid = errors.New("projection: invalid definition")

// Validate reports every problem with the definition.
func (d *Definition) Validate() error {
	errs := append([]string(nil), d.errs...)
	if len(d.handlers) == 0 && d.catchAll == nil {
		errs = append(errs, "no handlers: add some with On")
	}
	if d.pool != nil && d.tenantPools != nil {
		errs = append(errs, "Postgres and PostgresPerTenant exclude each other")
	}
	if d.inline {
		errs = append(errs, d.inlineProblems()...)
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w %q:\n  %s", ErrInvalid, d.name, strings.Join(errs, "\n  "))
}

// Name is the projection's name.
func (d *Definition) Name() string { return d.name }

// Definer is anything that carries a definition, as *Projection[S] does:
// what package projector runs.
type Definer interface{ Def() *Definition }

// Def returns the definition itself: a *Definition is a Definer too.
func (d *Definition) Def() *Definition { return d }
