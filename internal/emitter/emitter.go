// Package emitter relays derived events from the projections' outbox
// (jetproj.outbox, written in the same transaction as the read model) to
// JetStream: each to its projection's own stream on project.<name>.>, and to
// the stream it is linked to, exactly once and in partition order.
//
// Exactly once does not rest on the duplicate window: every derived event
// carries its partition's generation and emission sequence (headers
// Projection-Generation and Emission-Seq). Before it publishes a
// partition's events for the first time, the emitter reads the last message
// on that partition's subject and skips what the stream already holds; it
// deletes outbox rows only after JetStream acknowledged them. A KV lease
// keeps one emitter active.
//
// A subject whose event JetStream refuses (a linked stream that cannot be
// created, a message over the stream's limit) stalls alone: its rows wait
// in the outbox, in order, and are tried again with a growing pause, while
// every other subject's rows go on (StalledError, metric
// jetproj_emitter_stalled_subjects).
package emitter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/derived"
	"github.com/jetproj/jetproj/internal/lease"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/process"
	"github.com/jetproj/jetproj/internal/tracing"
	"github.com/jetproj/jetproj/pkg/contract"
)

// Config configures the emitter. Its env tags are the EMITTER_* variables;
// New gives its zero fields their defaults (Defaults).
type Config struct {
	Name         string        `env:"EMITTER_NAME" envDefault:"emitter" doc:"Lease key: one active emitter per name."`
	BatchSize    int           `env:"EMITTER_BATCH_SIZE" envDefault:"5000" doc:"Outbox rows read per page (a round reads pages while it publishes)."`
	PollInterval time.Duration `env:"EMITTER_POLL_INTERVAL" envDefault:"1s" doc:"Fallback poll when no notification arrives."`
	LeaseTTL     time.Duration `env:"EMITTER_LEASE_TTL" envDefault:"10s" doc:"Lease time to live: a standby takes over at most this long after the active emitter died."`
	Replicas     int           `env:"EMITTER_STREAM_REPLICAS" envDefault:"1" doc:"Replicas of the emitter's lease bucket and of the linked streams it creates."`
	Instance     string        `env:"EMITTER_INSTANCE" doc:"This instance's identity in the lease (default: host name and process id)."`
	// TenantDatabaseURLs are read by services/emitter, which relays the
	// outbox of each as well as DATABASE_URL's; a Go program passes pools
	// to NewDatabases instead.
	TenantDatabaseURLs []string `env:"EMITTER_TENANT_DATABASE_URLS" envSeparator:"," doc:"More databases whose outbox this emitter relays besides DATABASE_URL's, under the same lease: the tenant databases of projections with PostgresPerTenant (each tenant's derived events are written to its own database). Connection strings as for DATABASE_URL; each database once."`
	// DeadLetterAfter is off (0) or how long a subject may stay refused
	// before its rows move to jetproj.outbox_dead.
	DeadLetterAfter OptionalDuration `env:"EMITTER_DEAD_LETTER_AFTER" envDefault:"off" doc:"off, or a duration of at least 1s: a subject whose derived events JetStream has refused for longer (not counting timeouts and lost connections) has its outbox rows moved to jetproj.outbox_dead, with the reason; so has at once one refused for good (message over max_msg_size or max_payload, sealed stream, a linked stream jetproj did not create). Later rows of the subject follow it there until emitter requeue <subject>."`
}

// OptionalDuration is a duration, or off (0). Its text form is "off" or a
// time.ParseDuration string.
type OptionalDuration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *OptionalDuration) UnmarshalText(b []byte) error {
	if string(b) == "off" || string(b) == "" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("want off or a duration (30m, 2h)")
	}
	if v <= 0 {
		return fmt.Errorf("want off or a positive duration")
	}
	*d = OptionalDuration(v)
	return nil
}

// String is "off" or the duration.
func (d OptionalDuration) String() string {
	if d <= 0 {
		return "off"
	}
	return time.Duration(d).String()
}

// Validate lists every problem.
func (c Config) Validate() []string {
	var p []string
	if c.BatchSize < 1 {
		p = append(p, fmt.Sprintf("EMITTER_BATCH_SIZE: %d: want at least 1", c.BatchSize))
	}
	if c.PollInterval < time.Millisecond {
		p = append(p, fmt.Sprintf("EMITTER_POLL_INTERVAL: %v: want at least 1ms", c.PollInterval))
	}
	if c.LeaseTTL < time.Second {
		p = append(p, fmt.Sprintf("EMITTER_LEASE_TTL: %v: want at least 1s", c.LeaseTTL))
	}
	if c.Name == "" {
		p = append(p, "EMITTER_NAME: must not be empty")
	}
	for i, u := range c.TenantDatabaseURLs {
		if _, err := pgxpool.ParseConfig(u); u == "" || err != nil {
			// Never quoted: it may hold a password.
			p = append(p, fmt.Sprintf("EMITTER_TENANT_DATABASE_URLS: entry %d: not a valid PostgreSQL connection string", i+1))
		}
	}
	if c.DeadLetterAfter < 0 || c.DeadLetterAfter > 0 && time.Duration(c.DeadLetterAfter) < time.Second {
		p = append(p, fmt.Sprintf("EMITTER_DEAD_LETTER_AFTER: %v: want off or at least 1s", time.Duration(c.DeadLetterAfter)))
	}
	return p
}

// Defaults returns the configuration with every zero field set to its
// default: the env tag's (config.FillDefaults), and for Instance the host
// name and process id.
func (c Config) Defaults() Config {
	c = config.FillDefaults(c)
	if c.Instance == "" {
		c.Instance = process.Instance()
	}
	return c
}

// Database is one database whose outbox the emitter relays.
type Database struct {
	// Name tells the database apart in logs and on the status page
	// (host:port/database, say); empty for the only one.
	Name string
	Pool *pgxpool.Pool
}

// Emitter relays the outbox of one database or several, under one lease.
type Emitter struct {
	cfg     Config
	js      jetstream.JetStream
	log     *slog.Logger
	emitted prometheus.Counter
	// duplicates counts publishes JetStream acknowledged as duplicates of
	// another message (derived.ErrUnexpectedDuplicate).
	duplicates prometheus.Counter
	// deadLettered counts outbox rows moved to jetproj.outbox_dead.
	deadLettered prometheus.Counter
	held         prometheus.Gauge
	stalled      prometheus.Gauge
	// dbs relay a database's outbox each, side by side.
	dbs []*relayer
}

// relayer relays one database's outbox: all that follows is per database.
type relayer struct {
	*Emitter
	db   string // Database.Name
	pool *pgxpool.Pool
	wake chan struct{}
	busy opsserver.Busy // a relay round in progress

	// marks is what each subject's stream holds: generation and emission
	// sequence of its last derived event.
	marks *derived.Tracker
	// streams memoises ownStream.
	streams   map[string]string
	streamsMu sync.Mutex
	mu        sync.Mutex
	// acked are the ids of the last round's rows, published and
	// acknowledged: the next round deletes them.
	acked []int64
	// stalls are the subjects whose last attempt JetStream refused, and
	// readAt when the last round read the outbox. Only the relay changes
	// them, under mu (Stalled reads them).
	stalls map[string]*stall
	readAt time.Time
	// ahead is the next page, read while the last round published; nil
	// when the next round reads from the start. unrelayed are the subjects
	// of the last round's page with rows left in the outbox: a page read
	// ahead lacks those rows, so their later ones wait too.
	ahead     *page
	unrelayed map[string]bool
	// dead are the subjects with rows in jetproj.outbox_dead: their outbox
	// rows are never published and follow them there (follow). deadLoaded
	// reports whether dead was read since the lease was taken; followAt is
	// when follow last ran.
	dead       map[string]bool
	deadLoaded bool
	followAt   time.Time
}

// stall is a subject whose derived event JetStream refused: its rows wait
// in the outbox until Until, then are tried again (derived.Backoff: from
// 250 ms, doubling to 30 s).
type stall struct {
	derived.Backoff
	since time.Time // first refusal
	err   string    // the last refusal
}

// New builds an Emitter of pool's outbox.
func New(cfg Config, pool *pgxpool.Pool, nc *nats.Conn, log *slog.Logger, reg prometheus.Registerer) (*Emitter, error) {
	return NewDatabases(cfg, []Database{{Pool: pool}}, nc, log, reg)
}

// NewDatabases builds an Emitter of several databases' outboxes (the
// tenant databases of projections with PostgresPerTenant, say). Each is
// relayed on its own, side by side, with every guarantee of one: exactly
// once, a subject's events in order, a refused subject stalling alone. A
// database must be named once: two relays of one outbox would publish its
// rows twice.
func NewDatabases(cfg Config, dbs []Database, nc *nats.Conn, log *slog.Logger, reg prometheus.Registerer) (*Emitter, error) {
	cfg = cfg.Defaults()
	if p := cfg.Validate(); len(p) > 0 {
		return nil, fmt.Errorf("emitter: %w", &config.Error{Problems: p})
	}
	if len(dbs) == 0 {
		return nil, errors.New("emitter: no database")
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(max(4*cfg.BatchSize, 2*maxInFlight)), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Emitter{cfg: cfg, js: js, log: log,
		emitted: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetproj_emitter_events_emitted_total", Help: "Derived events published."}),
		held:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetproj_emitter_lease_held", Help: "1 on the active emitter, 0 on a standby."}),
		stalled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetproj_emitter_stalled_subjects", Help: "Subjects whose derived events JetStream refused; their rows wait in the outbox."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetproj_emitter_unexpected_duplicates_total",
			Help: "Derived events JetStream discarded as duplicates of another message; their subjects stall and the rows wait in the outbox."}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetproj_emitter_dead_lettered_total",
			Help: "Outbox rows moved to jetproj.outbox_dead: refused for good or for longer than EMITTER_DEAD_LETTER_AFTER, or following such a row of their subject."}),
	}
	seen := map[*pgxpool.Pool]bool{}
	for _, d := range dbs {
		if d.Pool == nil || seen[d.Pool] {
			return nil, fmt.Errorf("emitter: database %q: no pool, or a pool given twice", d.Name)
		}
		seen[d.Pool] = true
		log := e.log
		if d.Name != "" {
			log = log.With("database", d.Name)
		}
		r := &relayer{db: d.Name, pool: d.Pool, wake: make(chan struct{}, 1), stalls: map[string]*stall{}, dead: map[string]bool{}}
		r.Emitter = &Emitter{}
		*r.Emitter = *e // shares the metrics and JetStream; logs name the database
		r.Emitter.log = log
		r.marks = derived.NewTracker(js)
		e.dbs = append(e.dbs, r)
	}
	for _, r := range e.dbs {
		r.Emitter.dbs = e.dbs
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{e.emitted, e.duplicates, e.deadLettered, e.held, e.stalled} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return e, nil
}

// Run relays until ctx ends, while holding the emitter's lease: every
// database's outbox, side by side.
func (e *Emitter) Run(ctx context.Context) error {
	kv, err := lease.EnsureBucket(ctx, e.js, contract.EmitterLeaseBucket, e.cfg.LeaseTTL, e.cfg.Replicas)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	err = lease.Run(ctx, kv, e.cfg.Name, e.cfg.Instance, lease.Options{Logger: e.log}, func(ctx context.Context, _ *lease.Lease) error {
		e.held.Set(1)
		defer e.held.Set(0)
		var wg sync.WaitGroup
		for _, r := range e.dbs {
			r.marks.Forget() // another emitter may have run meanwhile
			r.ahead, r.unrelayed, r.deadLoaded = nil, nil, false
			wg.Go(func() { r.relay(ctx) })
		}
		wg.Wait()
		return nil
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// BusySince is when the oldest relay round in progress (reading the
// outbox, publishing, waiting for acknowledgements) started; zero while
// the emitter waits for rows, for a retry or for the lease. A liveness
// check (opsserver.NotWedged) reports the emitter wedged when it is too
// old.
func (e *Emitter) BusySince() time.Time {
	var oldest time.Time
	for _, r := range e.dbs {
		if t := r.busy.Since(); !t.IsZero() && (oldest.IsZero() || t.Before(oldest)) {
			oldest = t
		}
	}
	return oldest
}

// StalledSubject is a subject whose derived events JetStream refuses: its
// rows wait in the outbox of Database.
type StalledSubject struct {
	Database string    `json:"database,omitempty"`
	Subject  string    `json:"subject"`
	Since    time.Time `json:"since"` // the first refusal
	Error    string    `json:"error"` // the last refusal
}

// Stalled lists the stalled subjects, oldest first. It is safe to call
// while the emitter runs.
func (e *Emitter) Stalled() []StalledSubject {
	var out []StalledSubject
	for _, r := range e.dbs {
		r.mu.Lock()
		for subj, s := range r.stalls {
			out = append(out, StalledSubject{Database: r.db, Subject: subj, Since: s.since, Error: s.err})
		}
		r.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b StalledSubject) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		return strings.Compare(a.Database+"\x00"+a.Subject, b.Database+"\x00"+b.Subject)
	})
	return out
}

// countStalled sets the stalled subjects' gauge.
func (e *Emitter) countStalled() {
	n := 0
	for _, r := range e.dbs {
		r.mu.Lock()
		n += len(r.stalls)
		r.mu.Unlock()
	}
	e.stalled.Set(float64(n))
}

// relay runs rounds until ctx ends: errors are logged and retried.
func (e *relayer) relay(ctx context.Context) {
	defer e.busy.Stop()
	lctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { e.listen(lctx) })
	defer func() { stop(); wg.Wait() }()
	backoff := 100 * time.Millisecond
	for {
		e.busy.Start()
		n, err := e.round(ctx)
		e.busy.Stop()
		if ctx.Err() != nil {
			return
		}
		if se := (*StalledError)(nil); errors.As(err, &se) {
			// The others went on: no pause for them.
			e.log.Warn("derived events held back; the others relayed", "subjects", len(se.Subjects), "first", se.Subjects[0], "error", se.Err)
			err = nil
		}
		if err != nil {
			e.log.Warn("relay interrupted; retrying", "error", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if n > 0 {
			// Straight on: the next round deletes this one's rows with
			// its read, and picks up what arrived meanwhile.
			continue
		}
		t := time.NewTimer(e.idleWait(time.Now()))
		select {
		case <-ctx.Done():
		case <-e.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

func (e *relayer) listen(ctx context.Context) {
	for ctx.Err() == nil {
		conn, err := e.pool.Acquire(ctx)
		if err == nil {
			_, err = conn.Exec(ctx, "LISTEN jetproj_outbox")
			if err == nil {
				e.poke()
				for err == nil {
					_, err = conn.Conn().WaitForNotification(ctx)
					e.poke()
				}
			}
			if ctx.Err() != nil {
				_ = conn.Conn().Close(context.Background())
			}
			conn.Release()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (e *relayer) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// row is an outbox row: a derived event and its id.
type row struct {
	id int64
	derived.Event
}

// page is one read of the outbox.
type page struct {
	rows   []row
	readAt time.Time
	// ahead reports a page read while the previous one was published: it
	// lacks that page's rows.
	ahead bool
	// deleted are the acknowledged rows the read deleted.
	deleted []int64
	err     error
}

// maxInFlight bounds the derived events published and not yet
// acknowledged.
const maxInFlight = 4096

// idleWait is how long the relay may wait for a notification: the poll
// interval, or less when a stalled subject is due before. A subject that
// was due when the last round read the outbox was read by it; one that
// came due since is read at once.
func (e *relayer) idleWait(now time.Time) time.Duration {
	wait := e.cfg.PollInterval
	for _, s := range e.stalls {
		if s.Until.After(e.readAt) {
			wait = min(wait, max(s.Until.Sub(now), 0))
		}
	}
	return wait
}

// RelayOnce publishes one round of outbox rows of each database: a page
// of up to BatchSize rows, published asynchronously across subjects (a
// subject's rows one at a time, each acknowledged before the next), while
// the next page is read from PostgreSQL in the same statement that deletes
// the rows the previous round relayed. A round that reads nothing
// therefore still deletes; it returns how many rows it relayed. Rows of a
// subject JetStream refuses stay in the outbox, the subject stalls
// (*StalledError) and the others are relayed. A round that fails as a
// whole forgets what it knew of the streams: the next reads them again.
// With several databases, the first error other than a StalledError wins;
// stalled subjects of every database are reported together. RelayOnce is
// not safe for concurrent use.
func (e *Emitter) RelayOnce(ctx context.Context) (int, error) {
	total := 0
	var stalled *StalledError
	var failed error
	for _, r := range e.dbs {
		n, err := r.round(ctx)
		total += n
		var se *StalledError
		switch {
		case err == nil:
		case errors.As(err, &se):
			if stalled == nil {
				stalled = &StalledError{Err: se.Err}
			}
			stalled.Subjects = append(stalled.Subjects, se.Subjects...)
		case failed == nil:
			failed = err
		}
	}
	if failed != nil {
		return total, failed
	}
	if stalled != nil {
		return total, stalled
	}
	return total, nil
}

// round is one round of this database's outbox (RelayOnce).
func (e *relayer) round(ctx context.Context) (int, error) {
	n, err := e.relayOnce(ctx)
	if se := (*StalledError)(nil); err != nil && !errors.As(err, &se) {
		e.marks.Forget()
		e.ahead = nil // read from the start again
	}
	e.countStalled()
	return n, err
}

// stalledNow lists the subjects still paused at now, and forgets those
// whose pause ended long ago without their rows coming back (a deleted
// projection's, say).
func (e *relayer) stalledNow(now time.Time) []string {
	subjs := []string{}
	for subj, s := range e.stalls {
		switch {
		case now.Before(s.Until):
			subjs = append(subjs, subj)
		case now.Sub(s.Until) > derived.BackoffMax:
			e.mu.Lock()
			delete(e.stalls, subj)
			e.mu.Unlock()
		}
	}
	return subjs
}

// read deletes the rows of del (relayed and acknowledged) and reads the
// next page: the first rows in id order that are neither in del nor in
// skip nor on a subject of skipSubj.
func (e *relayer) read(ctx context.Context, del, skip []int64, skipSubj []string) *page {
	pg := &page{readAt: time.Now(), deleted: del}
	if del == nil {
		del = []int64{}
	}
	if skip == nil {
		skip = []int64{}
	}
	if skipSubj == nil {
		skipSubj = []string{}
	}
	// The statement must cost about one scan of the outbox whatever plan
	// PostgreSQL picks, and that depends on statistics a queue table's
	// autoanalyze takes at random moments (empty, half full). The id lists
	// are therefore compared as arrays that PostgreSQL hashes (= ANY,
	// <> ALL: one lookup a row), which it does only for constants: the
	// statement is planned anew with its values each time (an unnamed
	// statement, QueryExecModeCacheDescribe), never with a generic plan.
	// Joined instead (IN / NOT IN a subquery), a nested loop or a subplan
	// not hashed compared each row with each id: a 180,000-row drain once
	// took 105 CPU-seconds of PostgreSQL instead of 2.
	rows, err := e.pool.Query(ctx, `WITH relayed AS (DELETE FROM jetproj.outbox WHERE id = ANY($2::bigint[]))
SELECT id, projection, partition, subject, generation, emit_seq, event_type, payload::text,
       link_to, source_seq, source_position, traceparent, links, link_only, metadata, causation_id FROM jetproj.outbox
 WHERE id <> ALL($2::bigint[]) AND id <> ALL($3::bigint[]) AND subject <> ALL($4::text[])
 ORDER BY id LIMIT $1`, pgx.QueryExecModeCacheDescribe, e.cfg.BatchSize, del, skip, skipSubj)
	if err != nil {
		pg.err = fmt.Errorf("emitter: read outbox: %w", err)
		return pg
	}
	pg.rows = make([]row, 0, e.cfg.BatchSize)
	for rows.Next() {
		var r row
		var seq, sseq int64
		var payload, linkTo, links, meta string
		if err := rows.Scan(&r.id, &r.Projection, &r.Partition, &r.Subject, &r.Generation, &seq, &r.Type, &payload,
			&linkTo, &sseq, &r.SourcePosition, &r.TraceParent, &links, &r.LinkOnly, &meta, &r.CausationID); err != nil {
			rows.Close()
			pg.err = fmt.Errorf("emitter: read outbox: %w", err)
			return pg
		}
		r.Seq, r.SourceSeq, r.Payload = uint64(seq), uint64(sseq), []byte(payload)
		// Rows written before schema version 6 name one stream in link_to
		// and have no metadata.
		var err error
		if r.Links, err = derived.OutboxLinks(linkTo, links); err == nil {
			r.Metadata, err = derived.OutboxMetadata(meta)
		}
		if err != nil {
			rows.Close()
			pg.err = fmt.Errorf("emitter: read outbox row %d: %w", r.id, err)
			return pg
		}
		r.Partition = derived.LoadedString(r.Partition)
		// The id is derived from the row rather than read from msg_id, so
		// that rows written before keys were escaped get safe ids too.
		r.MsgID = derived.MsgID(r.Projection, r.Generation, r.Partition, r.Seq)
		pg.rows = append(pg.rows, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		pg.err = fmt.Errorf("emitter: read outbox: %w", err)
	}
	return pg
}

// A round goes on with the next pages while the outbox has rows, up to
// about roundRows rows or roundTime: its publishes then do not wait for a
// page's last acknowledgements before the next page goes out.
const (
	roundRows = 50_000
	roundTime = time.Second
)

func (e *relayer) relayOnce(ctx context.Context) (int, error) {
	if err := e.loadDead(ctx); err != nil {
		return 0, err
	}
	if len(e.dead) > 0 && time.Since(e.followAt) >= followEvery {
		if err := e.follow(ctx); err != nil {
			return 0, err
		}
	}
	e.mu.Lock()
	acked := e.acked
	e.mu.Unlock()
	now := time.Now()
	// Dead-lettered subjects are left out like stalled ones: their rows
	// follow them into the dead letter (follow), never to JetStream.
	stalledNow := e.stalledNow(now)
	for subj := range e.dead {
		stalledNow = append(stalledNow, subj)
	}
	// A page read ahead lacks the rows of the round before: the subjects
	// that round did not relay wait, so that none of their rows overtakes
	// another. A page read from the start lacks only stalled subjects.
	hold := make(map[string]bool, len(stalledNow)+len(e.unrelayed))
	for _, s := range stalledNow {
		hold[s] = true
	}
	var batch []row
	pg := e.ahead
	e.ahead = nil
	if pg != nil {
		for s := range e.unrelayed {
			hold[s] = true
		}
		for _, r := range pg.rows {
			if !hold[r.Subject] {
				batch = append(batch, r)
			}
		}
		if len(batch) == 0 {
			pg = nil // read from the start, deleting what the last round relayed
		}
	}
	if pg == nil {
		// Stalled subjects' rows are left where they are: their order is
		// kept and they do not take the round's room.
		pg = e.read(ctx, acked, nil, stalledNow)
		if pg.err != nil {
			return 0, pg.err
		}
		acked = nil
		batch = pg.rows
		clear(hold) // the read left the stalled subjects out
	}
	e.readAt = pg.readAt
	e.mu.Lock()
	e.acked = nil // deleted, or to be deleted by the reads of this round
	e.mu.Unlock()
	if len(batch) == 0 {
		e.unrelayed = nil
		return 0, nil
	}
	en := &engine{e: e, ctx: ctx, queues: map[string]*subjectQueue{}, held: map[string]bool{},
		refused: map[string]error{}, targets: map[string][]string{}}
	for _, r := range pg.rows {
		if hold[r.Subject] {
			en.held[r.Subject] = true
		}
	}
	if err := en.add(batch); err != nil {
		e.mu.Lock()
		e.acked = acked
		e.mu.Unlock()
		return 0, err
	}
	// While a page is published, the next is read, in the statement that
	// deletes what was relayed since the last read; it leaves out the
	// round's rows and the subjects that have rows waiting.
	inRound := make([]int64, 0, len(pg.rows))
	for _, r := range pg.rows {
		inRound = append(inRound, r.id)
	}
	toDelete, deletedUpTo := acked, 0
	var reading chan *page
	launch := func() {
		del := append(toDelete, en.done[deletedUpTo:]...)
		toDelete, deletedUpTo = nil, len(en.done)
		skipIDs := slices.Clone(inRound)
		skipSubj := slices.Clone(stalledNow)
		for s := range en.held {
			skipSubj = append(skipSubj, s)
		}
		for s := range en.refused {
			skipSubj = append(skipSubj, s)
		}
		ch := make(chan *page, 1)
		reading = ch
		go func() {
			next := e.read(ctx, del, skipIDs, skipSubj)
			next.ahead = true
			if next.err == nil {
				e.prefetchMarks(ctx, next.rows) //nolint:errcheck // best effort; the round reads what is missing
			}
			ch <- next
		}()
	}
	launch()
	started := time.Now()
	more := false // a page was added since the last read began: read on
	for en.err == nil {
		en.pump()
		// The next read begins once the rows ready to go are fewer than a
		// page: reading further ahead gains nothing, and every row read
		// and not yet relayed is one more that the next read skips.
		if more && reading == nil && len(en.ready) < e.cfg.BatchSize {
			more = false
			launch()
		}
		if reading != nil {
			var next *page
			if en.idle() {
				next = <-reading
			} else {
				select {
				case next = <-reading:
				default:
				}
			}
			if next != nil {
				reading = nil
				switch {
				case next.err != nil:
					// Its deletions did not happen: a later read makes them.
					toDelete = append(next.deleted, toDelete...)
					e.log.Warn("reading the outbox ahead failed; the round ends with what it has", "error", next.err)
				case len(next.rows) == 0:
				case len(inRound) < roundRows && time.Since(started) < roundTime:
					var rows []row
					for _, r := range next.rows {
						inRound = append(inRound, r.id)
						// A subject refused or held since the read began
						// may have rows in it: they wait with the others.
						if en.held[r.Subject] || en.refused[r.Subject] != nil {
							en.held[r.Subject] = true
							continue
						}
						rows = append(rows, r)
					}
					if err := en.add(rows); err != nil {
						en.err = err
						continue
					}
					more = true
					continue
				default:
					e.ahead = next
				}
			}
		}
		if en.idle() {
			if reading == nil && !more {
				break
			}
			continue
		}
		en.waitHead()
	}
	if reading != nil {
		if next := <-reading; next.err != nil {
			toDelete = append(next.deleted, toDelete...)
		} else if en.err == nil {
			e.ahead = next
		}
	}
	e.mu.Lock()
	e.acked = append(toDelete, en.done[deletedUpTo:]...) // deleted by the next round
	e.mu.Unlock()
	e.unrelayed = en.held
	for s := range en.refused {
		e.unrelayed[s] = true
	}
	if en.err != nil {
		return 0, en.err
	}
	return en.finish()
}

// flight is a derived event on its way to a stream.
type flight struct {
	q      *subjectQueue
	target string
	fut    jetstream.PubAckFuture
}

// subjectQueue is one subject's rows of a round, published in order, one
// at a time.
type subjectQueue struct {
	subj    string
	rows    []*row
	next    int  // the row being published
	busy    int  // its publishes not yet acknowledged
	ready   bool // in the ready list
	refused bool
}

// engine publishes a round's rows: up to maxInFlight events in flight
// across subjects, a subject's next row only once every publish of the one
// before was acknowledged — were two of one subject in flight together,
// the first could fail while the second lands, and the stream's last mark
// would then hide the first from every later round.
type engine struct {
	e        *relayer
	ctx      context.Context
	queues   map[string]*subjectQueue
	ready    []*subjectQueue
	inFlight []flight
	head     int
	// done are the ids of the rows relayed (or dropped: their projection's
	// stream is gone), in the order they were.
	done []int64
	// held are the subjects with rows left out of the round, refused the
	// subjects JetStream refused with their first error, in order, and
	// targets every subject a refused row went to: their marks are read
	// again next time (a refused publish may have landed after all).
	held    map[string]bool
	refused map[string]error
	order   []string
	targets map[string][]string
	gone    []string
	err     error // the round must stop
}

// add queues rows, which follow the rows added before.
func (en *engine) add(rows []row) error {
	if err := en.e.prefetchMarks(en.ctx, rows); err != nil {
		return err
	}
	for i := range rows {
		r := &rows[i]
		q := en.queues[r.Subject]
		if q == nil {
			q = &subjectQueue{subj: r.Subject}
			en.queues[r.Subject] = q
		}
		q.rows = append(q.rows, r)
		if !q.ready && q.busy == 0 && !q.refused && q.next == len(q.rows)-1 {
			q.ready = true
			en.ready = append(en.ready, q)
		}
	}
	return nil
}

func (en *engine) refuse(q *subjectQueue, err error) {
	q.refused = true
	if _, ok := en.refused[q.subj]; !ok {
		en.refused[q.subj] = err
		en.order = append(en.order, q.subj)
	}
}

// settled moves q on once its row's publishes are all acknowledged.
func (en *engine) settled(q *subjectQueue) {
	if q.busy > 0 || q.refused {
		return
	}
	en.done = append(en.done, q.rows[q.next].id)
	if _, ok := en.e.stalls[q.subj]; ok { // flowing again
		en.e.mu.Lock()
		delete(en.e.stalls, q.subj)
		en.e.mu.Unlock()
	}
	q.next++
	if q.next < len(q.rows) {
		q.ready = true
		en.ready = append(en.ready, q)
	}
}

// idle reports whether nothing is in flight or ready to go.
func (en *engine) idle() bool { return en.head == len(en.inFlight) && len(en.ready) == 0 }

// pump sends ready rows while there is room in flight.
func (en *engine) pump() {
	for len(en.inFlight)-en.head < maxInFlight && len(en.ready) > 0 {
		q := en.ready[0]
		en.ready[0] = nil
		en.ready = en.ready[1:]
		q.ready = false
		if en.e.send(en, q) {
			en.done = append(en.done, q.rows[q.next].id) // dropped with its projection
			q.next++
			if q.next < len(q.rows) {
				q.ready = true
				en.ready = append(en.ready, q)
			}
			continue
		}
		en.settled(q)
	}
	if en.head == len(en.inFlight) && en.head > 0 {
		en.inFlight, en.head = en.inFlight[:0], 0
	}
}

// waitHead waits for the oldest publish in flight to be acknowledged.
func (en *engine) waitHead() {
	f := en.inFlight[en.head]
	en.inFlight[en.head] = flight{}
	en.head++
	select {
	case ack := <-f.fut.Ok():
		if err := en.e.marks.Acked(en.ctx, f.fut.Msg(), ack); err != nil {
			if errors.Is(err, derived.ErrUnexpectedDuplicate) {
				en.e.duplicates.Inc()
				en.e.log.Error("derived event discarded by JetStream as a duplicate of another message; its subject stalls", "subject", f.q.subj, "error", err)
			}
			en.refuse(f.q, err)
		} else {
			en.e.emitted.Inc()
		}
	case err := <-f.fut.Err():
		en.refuse(f.q, fmt.Errorf("publish %s: %w", f.target, err))
	case <-en.ctx.Done():
		en.err = en.ctx.Err()
		return
	}
	f.q.busy--
	en.settled(f.q)
}

// finish stalls the refused subjects, moves those refused for good or for
// too long to the dead letter, and reports the round.
func (en *engine) finish() (int, error) {
	e := en.e
	if len(en.gone) > 0 {
		e.log.Warn("dropped derived events of projections without a stream (deleted?)", "projections", slices.Compact(slices.Sorted(slices.Values(en.gone))))
	}
	if len(en.order) == 0 {
		return len(en.done), nil
	}
	// Pauses count from the round's end: a round slower than a pause
	// would otherwise read the same stalled subjects again first.
	end := time.Now()
	e.mu.Lock()
	for _, subj := range en.order {
		e.marks.Drop(en.targets[subj]...)
		s := e.stalls[subj]
		if s == nil {
			s = &stall{since: end}
			e.stalls[subj] = s
		}
		s.Refused(end)
		s.err = en.refused[subj].Error()
	}
	e.mu.Unlock()
	if len(en.done) == 0 && allTransient(en.refused) {
		// Nothing went through and nothing was refused for a reason of its
		// own: JetStream is probably unreachable or overloaded, the relay's
		// trouble, so it pauses as a whole. The subjects stall all the same:
		// should only they be in trouble, the next round reads the others.
		return 0, fmt.Errorf("emitter: %d subjects not relayed, the first %s: %w", len(en.order), en.order[0], en.refused[en.order[0]])
	}
	order := en.order
	if after := time.Duration(e.cfg.DeadLetterAfter); after > 0 {
		var subjs, reasons []string
		for _, subj := range order {
			err := en.refused[subj]
			switch age := end.Sub(e.stalls[subj].since); {
			case RefusedForGood(err):
				subjs, reasons = append(subjs, subj), append(reasons, "refused for good: "+err.Error())
			case !transient(err) && age >= after:
				subjs, reasons = append(subjs, subj), append(reasons, fmt.Sprintf("refused for %v (EMITTER_DEAD_LETTER_AFTER %v): %v", age.Round(time.Millisecond), after, err))
			}
		}
		if len(subjs) > 0 {
			if err := e.deadLetter(en.ctx, subjs, reasons); err != nil {
				// They stay stalled: nothing is lost, the next refusal tries again.
				e.log.Error("moving refused derived events to the dead letter failed; their subjects stay stalled", "subjects", len(subjs), "first", subjs[0], "error", err)
			} else {
				order = slices.DeleteFunc(slices.Clone(order), func(s string) bool { return e.dead[s] })
			}
		}
	}
	if len(order) == 0 {
		return len(en.done), nil
	}
	return len(en.done), &StalledError{Subjects: order, Err: en.refused[order[0]]}
}

// ownStream is the stream of the projection's own derived events,
// contract.ProjectionStream(projection), built once per projection: the
// relay asks for it for every row.
func (e *relayer) ownStream(projection string) string {
	e.streamsMu.Lock()
	defer e.streamsMu.Unlock()
	s, ok := e.streams[projection]
	if !ok {
		if e.streams == nil || len(e.streams) > 10000 {
			e.streams = map[string]string{}
		}
		s = contract.ProjectionStream(projection)
		e.streams[projection] = s
	}
	return s
}

// send publishes q's current row to its targets the streams do not hold
// yet, adding the publishes to en's in flight; it reports whether the row is to
// be dropped because its projection's stream is gone.
func (e *relayer) send(en *engine, q *subjectQueue) bool {
	ctx := en.ctx
	r := q.rows[q.next]
	own := e.ownStream(r.Projection)
	if r.LinkOnly {
		// Not published there, but a projection without its stream was
		// deleted: its rows are dropped, links too.
		if _, err := e.marks.Last(ctx, own, r.Subject); errors.Is(err, jetstream.ErrStreamNotFound) {
			en.gone = append(en.gone, r.Projection)
			return true
		}
	}
	to, err := e.marks.Targets(ctx, own, r.Event, e.cfg.Replicas)
	if err != nil {
		en.refuse(q, err)
		return false
	}
	m := r.Mark()
	for _, t := range to {
		en.targets[q.subj] = append(en.targets[q.subj], t.Subject)
		last, err := e.marks.Last(ctx, t.Stream, t.Subject)
		if errors.Is(err, jetstream.ErrStreamNotFound) && t.Stream == own {
			en.gone = append(en.gone, r.Projection) // deleted projection: drop its rows, links too
			return true
		}
		// A linked stream removed since it was ensured is created again
		// next time: Last forgets it was ensured.
		if err != nil {
			en.refuse(q, err)
			return false
		}
		if !last.Before(m) {
			continue // the stream holds it already
		}
		msg := r.Msg(t.Subject)
		if r.TraceParent != "" {
			// The derived event continues its source event's trace.
			_, span, tp := tracing.Start(ctx, r.TraceParent, "jetproj.emitter publish "+r.Projection, trace.SpanKindProducer,
				attribute.String("messaging.destination.name", t.Subject))
			if tp != "" {
				msg.Header.Set(contract.HeaderTraceParent, tp)
			}
			span.End()
		}
		fut, err := e.js.PublishMsgAsync(msg)
		if err != nil {
			en.refuse(q, fmt.Errorf("publish %s: %w", t.Subject, err))
			return false
		}
		en.inFlight = append(en.inFlight, flight{q, t.Subject, fut})
		q.busy++
	}
	return false
}

// allTransient reports whether every refusal is one that says nothing of
// its event: a timeout, a lost connection, no answer.
func allTransient(refused map[string]error) bool {
	for _, err := range refused {
		if !transient(err) {
			return false
		}
	}
	return true
}

// transient reports whether a refusal says nothing of its event: a
// timeout, a lost connection, no answer.
func transient(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, jetstream.ErrAsyncPublishTimeout) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrTooManyStalledMsgs)
}

// RefusedForGood reports whether a refusal will not pass while the
// servers' and streams' configuration stays as it is, told by JetStream's
// API error codes and the client's errors, never by their text: a message
// larger than the stream's max_msg_size or the server's max_payload
// (10054, nats.ErrMaxPayload), a sealed stream (10109), a linked stream
// jetproj did not create (derived.ErrNotLinkStream).
func RefusedForGood(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, derived.ErrNotLinkStream) {
		return true
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode {
		case jetstream.JSErrCodeStreamMessageExceedsMaximum, jsErrCodeStreamSealed:
			return true
		}
	}
	return false
}

// jsErrCodeStreamSealed is JetStream's "invalid operation on sealed stream".
const jsErrCodeStreamSealed jetstream.ErrorCode = 10109

// prefetchMarks reads what the streams hold on the subjects of batch that
// the emitter has not seen yet — own and linked — with multi-subject
// direct gets, so that a batch over many new partitions costs a few round
// trips rather than one per partition. What it cannot settle is read one
// by one in the relay loop.
func (e *relayer) prefetchMarks(ctx context.Context, batch []row) error {
	per := map[string][]string{}
	seen := map[string]bool{}
	add := func(stream, subj string) {
		if !seen[subj] && !e.marks.Known(subj) {
			seen[subj] = true
			per[stream] = append(per[stream], subj)
		}
	}
	for _, r := range batch {
		add(e.ownStream(r.Projection), r.Subject)
		for _, l := range r.Links {
			if stream, subj, err := derived.LinkTarget(l.Stream, r.Subject); err == nil {
				add(stream, subj)
			}
		}
	}
	if len(per) == 0 {
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for stream, subjs := range per {
		g.Go(func() error { return e.marks.Prefetch(gctx, stream, subjs) })
	}
	return g.Wait()
}
