package feeder

import (
	"fmt"
	"os"
	"regexp"
	"time"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/subject"
)

// OnOversized values: what the feeder does with an event larger than the
// server's max payload, or that the stream refuses for its max_msg_size.
const (
	// OversizedStop stops the feeder at the event: nothing after it is
	// published until the server accepts it (raise max_payload) or an
	// operator moves it aside. The status names the event.
	OversizedStop = "stop"
	// OversizedDeadLetter records the event in eventstore.dead_letters and
	// goes on with the next one.
	OversizedDeadLetter = "dead-letter"
)

// Config is one feeder's configuration. Its env tags are the FEEDER_*
// variables; the zero value with Defaults applied is the standard feeder.
type Config struct {
	Name   string `env:"FEEDER_NAME" envDefault:"events" doc:"Feeder name ([a-z0-9_-]+): its lease and checkpoint key. Several feeders with different names can run side by side."`
	Stream string `env:"FEEDER_STREAM" envDefault:"EVENTS" doc:"Target JetStream stream. Each feeder needs its own stream: it resumes from the stream's last message."`
	// SubjectPrefix is the first subject token; messages go to
	// <prefix>.<aggregate_type>.<aggregate_id>.
	SubjectPrefix  string   `env:"FEEDER_SUBJECT_PREFIX" envDefault:"events" doc:"Subject prefix: messages go to <prefix>.<aggregate_type>.<aggregate_id>."`
	AggregateTypes []string `env:"FEEDER_AGGREGATE_TYPES" envSeparator:"," doc:"Only feed these aggregate types (comma-separated; empty: all)."`
	EventTypes     []string `env:"FEEDER_EVENT_TYPES" envSeparator:"," doc:"Only feed event types matching these globs (comma-separated, * and ?; e.g. Ticket.*,Order.Created; empty: all)."`

	BatchSize    int           `env:"FEEDER_BATCH_SIZE" envDefault:"1000" doc:"Rows read from PostgreSQL per query."`
	PageBytes    int64         `env:"FEEDER_PAGE_BYTES" envDefault:"8388608" doc:"Payload and metadata bytes read from PostgreSQL per query at most (an event larger than this is read alone), and bytes of publishes awaiting their acknowledgement at most; the feeder holds about three times this."`
	MaxPending   int           `env:"FEEDER_MAX_PENDING" envDefault:"4000" doc:"Publishes awaiting their JetStream acknowledgement at most."`
	PollInterval time.Duration `env:"FEEDER_POLL_INTERVAL" envDefault:"1s" doc:"Fallback poll when no notification arrives."`
	// OnOversized is OversizedStop or OversizedDeadLetter.
	OnOversized string `env:"FEEDER_ON_OVERSIZED" envDefault:"stop" doc:"Event larger than the server's max payload or the stream's max_msg_size: stop (default; status names the event) or dead-letter (record it in eventstore.dead_letters and go on)."`

	StreamReplicas  int           `env:"FEEDER_STREAM_REPLICAS" envDefault:"1" doc:"Replicas of the target stream (1, 3 or 5)."`
	StreamMaxAge    time.Duration `env:"FEEDER_STREAM_MAX_AGE" envDefault:"0s" doc:"Maximum age of messages in the stream (0: keep forever)."`
	DuplicateWindow time.Duration `env:"FEEDER_DUPLICATE_WINDOW" envDefault:"2m" doc:"The stream's duplicate window for Nats-Msg-Id."`
	MaxConsumers    int           `env:"FEEDER_STREAM_MAX_CONSUMERS" envDefault:"-1" doc:"Consumers the stream allows (-1: unlimited)."`
	UpdateStream    bool          `env:"FEEDER_STREAM_UPDATE" envDefault:"false" doc:"Apply a changed stream configuration. When false, a difference is an error that lists it."`

	LeaseBucket string        `env:"FEEDER_LEASE_BUCKET" envDefault:"jetproj_feeder_leases" doc:"KV bucket of feeder leases (one active instance per name)."`
	LeaseTTL    time.Duration `env:"FEEDER_LEASE_TTL" envDefault:"10s" doc:"Lease time to live: a standby takes over at most this long after the active instance died."`
	StateBucket string        `env:"FEEDER_STATE_BUCKET" envDefault:"jetproj_feeder_state" doc:"KV bucket of feeder checkpoints."`
	Instance    string        `env:"FEEDER_INSTANCE" doc:"This instance's identity in the lease (default: host name and process id)."`
}

// Defaults returns the configuration with every zero field set to its
// default, as the env tags declare them.
func (c Config) Defaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Name, "events")
	def(&c.Stream, contract.EventsStream)
	def(&c.SubjectPrefix, contract.EventsPrefix)
	def(&c.OnOversized, OversizedStop)
	def(&c.LeaseBucket, contract.FeederLeaseBucket)
	def(&c.StateBucket, contract.FeederStateBucket)
	if c.Instance == "" {
		host, _ := os.Hostname()
		c.Instance = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.PageBytes == 0 {
		c.PageBytes = DefaultPageBytes
	}
	if c.MaxPending == 0 {
		c.MaxPending = 4000
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.StreamReplicas == 0 {
		c.StreamReplicas = 1
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 2 * time.Minute
	}
	if c.MaxConsumers == 0 {
		c.MaxConsumers = -1
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10 * time.Second
	}
	return c
}

// DefaultPageBytes is FEEDER_PAGE_BYTES's default, 8 MiB.
const DefaultPageBytes = 8 << 20

const (
	minPageBytes = 1 << 10 // 1 KiB
	maxPageBytes = 1 << 30 // 1 GiB
)

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)
	streamRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	bucketRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	globRE   = regexp.MustCompile(`^[A-Za-z0-9._:/*?-]+$`)
)

// Validate lists every problem with the configuration, each naming its
// variable.
func (c Config) Validate() []string {
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	if !nameRE.MatchString(c.Name) {
		add("FEEDER_NAME: %q: want 1-64 characters of [a-z0-9_-]", c.Name)
	}
	if !streamRE.MatchString(c.Stream) {
		add("FEEDER_STREAM: %q: want 1-64 characters of [A-Za-z0-9_-]", c.Stream)
	}
	if err := subject.ValidPrefix(c.SubjectPrefix); err != nil {
		add("FEEDER_SUBJECT_PREFIX: %q: %v", c.SubjectPrefix, err)
	}
	for _, t := range c.AggregateTypes {
		if t == "" {
			add("FEEDER_AGGREGATE_TYPES: empty entry")
		}
	}
	for _, g := range c.EventTypes {
		if !globRE.MatchString(g) {
			add("FEEDER_EVENT_TYPES: %q is not a glob: use letters, digits, . _ - : / and the wildcards * and ?", g)
		}
	}
	if c.BatchSize < 1 || c.BatchSize > 100000 {
		add("FEEDER_BATCH_SIZE: %d: want 1..100000", c.BatchSize)
	}
	if c.PageBytes < minPageBytes || c.PageBytes > maxPageBytes {
		add("FEEDER_PAGE_BYTES: %d: want %d..%d", c.PageBytes, minPageBytes, maxPageBytes)
	}
	if c.MaxPending < 1 || c.MaxPending > 1000000 {
		add("FEEDER_MAX_PENDING: %d: want 1..1000000", c.MaxPending)
	}
	if c.PollInterval < time.Millisecond {
		add("FEEDER_POLL_INTERVAL: %v: want at least 1ms", c.PollInterval)
	}
	if c.OnOversized != OversizedStop && c.OnOversized != OversizedDeadLetter {
		add("FEEDER_ON_OVERSIZED: %q: want %q or %q", c.OnOversized, OversizedStop, OversizedDeadLetter)
	}
	switch c.StreamReplicas {
	case 1, 3, 5:
	default:
		add("FEEDER_STREAM_REPLICAS: %d: want 1, 3 or 5", c.StreamReplicas)
	}
	if c.StreamMaxAge < 0 {
		add("FEEDER_STREAM_MAX_AGE: %v: must not be negative", c.StreamMaxAge)
	}
	if c.DuplicateWindow <= 0 {
		add("FEEDER_DUPLICATE_WINDOW: %v: must be positive", c.DuplicateWindow)
	}
	if c.StreamMaxAge > 0 && c.DuplicateWindow > c.StreamMaxAge {
		add("FEEDER_DUPLICATE_WINDOW: %v: must not exceed FEEDER_STREAM_MAX_AGE %v", c.DuplicateWindow, c.StreamMaxAge)
	}
	if c.MaxConsumers < -1 || c.MaxConsumers == 0 {
		add("FEEDER_STREAM_MAX_CONSUMERS: %d: want -1 (unlimited) or a positive number", c.MaxConsumers)
	}
	if !bucketRE.MatchString(c.LeaseBucket) {
		add("FEEDER_LEASE_BUCKET: %q: want 1-64 characters of [A-Za-z0-9_-]", c.LeaseBucket)
	}
	if !bucketRE.MatchString(c.StateBucket) {
		add("FEEDER_STATE_BUCKET: %q: want 1-64 characters of [A-Za-z0-9_-]", c.StateBucket)
	}
	if c.LeaseBucket == c.StateBucket {
		add("FEEDER_STATE_BUCKET: %q: must differ from FEEDER_LEASE_BUCKET (leases expire, checkpoints must not)", c.StateBucket)
	}
	if c.LeaseTTL < time.Second {
		add("FEEDER_LEASE_TTL: %v: want at least 1s", c.LeaseTTL)
	}
	return p
}
