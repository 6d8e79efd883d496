package projection

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/subject"
)

// Message is a message as a Source delivers it.
type Message struct {
	Subject  string
	Header   nats.Header
	Data     []byte
	Sequence uint64
	Time     time.Time
	// Pending is how many messages the source holds after this one, when
	// it knows (0 otherwise). The runtime uses it to tell catching up from
	// following the head.
	Pending uint64
}

// ErrNoMessage is returned by Source.Next when no message matches.
var ErrNoMessage = errors.New("projection: no message")

// Subscription is a running Consume.
//
// A Subscription may also have a method Pending(ctx context.Context)
// (uint64, error) that returns how many messages the source holds for it
// and has not delivered yet: a subscription that delivers nothing for a
// while although Pending reports messages is stopped and Consume is called
// again (the built-in source has it, against a client library's consumer
// that stops pulling after a server restart or a leader change).
type Subscription interface {
	// Stop ends delivery; no callback runs after it returns.
	Stop()
	// Err reports a failure after which delivery stopped and Consume must
	// be called again.
	Err() <-chan error
}

// Source is where a projection's messages come from. The built-in one reads
// a JetStream stream with an ordered consumer and direct gets; every
// implementation must pass the behaviour suite in package
// projector/sourcetest.
type Source interface {
	// Consume delivers, in sequence order, every message with sequence ≥
	// from that matches the source's subjects, calling deliver from one
	// goroutine, until Stop. deliver may block: that is backpressure.
	Consume(ctx context.Context, from uint64, deliver func(Message)) (Subscription, error)
	// Next returns the first message on subject with sequence ≥ from, or
	// ErrNoMessage.
	Next(ctx context.Context, subject string, from uint64) (Message, error)
	// Head is the sequence of the source's last message (0 when empty).
	Head(ctx context.Context) (uint64, error)
}

// PartitionProvider maps a message to its partition. Every implementation
// must pass the behaviour suite in package projector/partitiontest.
type PartitionProvider interface {
	// Partition returns the key of m's partition: the same key for every
	// message of one partition, never empty.
	Partition(m Message) (string, error)
}

// ErrNoPartition reports a message a provider cannot place.
var ErrNoPartition = errors.New("projection: message has no partition")

// AggregatePartitions places a feeder message in its aggregate's partition,
// "<aggregate_type>/<aggregate_id>", from the Aggregate-Type and
// Aggregate-Id headers. The type is encoded like a subject token (so it
// holds no "/" and the key splits at its first "/"); "wallet/w-1" for the
// usual names.
type AggregatePartitions struct{}

// Partition implements PartitionProvider.
func (AggregatePartitions) Partition(m Message) (string, error) {
	t, okT := m.Header[contract.HeaderAggregateType]
	id, okID := m.Header[contract.HeaderAggregateID]
	if !okT || !okID || len(t) == 0 || len(id) == 0 {
		return "", errors.Join(ErrNoPartition, errors.New("no Aggregate-Type or Aggregate-Id header on "+m.Subject))
	}
	return AggregateKey(unquoteHeader(t[0]), unquoteHeader(id[0])), nil
}

// AggregateKey is the partition key of an aggregate.
func AggregateKey(aggregateType, aggregateID string) string {
	return subject.EncodeToken(aggregateType) + "/" + aggregateID
}

func unquoteHeader(s string) string {
	if len(s) >= 2 && s[0] == '"' {
		if u, err := strconvUnquote(s); err == nil {
			return u
		}
	}
	return s
}

// SubjectPartitions places a message by its subject without the first Skip
// tokens: project.wallet_balance.wallet.w1 with Skip 2 is "wallet.w1".
type SubjectPartitions struct{ Skip int }

// Partition implements PartitionProvider.
func (p SubjectPartitions) Partition(m Message) (string, error) {
	toks := strings.Split(m.Subject, ".")
	if len(toks) <= p.Skip {
		return "", errors.Join(ErrNoPartition, errors.New("subject "+m.Subject+" is too short"))
	}
	return strings.Join(toks[p.Skip:], "."), nil
}

// GlobalPartitions places every message in the one global partition.
type GlobalPartitions struct{}

// Partition implements PartitionProvider.
func (GlobalPartitions) Partition(Message) (string, error) { return GlobalPartition, nil }

// PartitionFunc adapts a function.
type PartitionFunc func(m Message) (string, error)

// Partition implements PartitionProvider.
func (f PartitionFunc) Partition(m Message) (string, error) { return f(m) }

// FromSource reads the projection's messages from a custom source.
func FromSource(s Source) Option { return func(d *Definition) { d.customSource = s } }

// Partitions places messages in partitions with a custom provider.
func Partitions(p PartitionProvider) Option { return func(d *Definition) { d.partitions = p } }

var strconvUnquote = func(s string) (string, error) { return strconv.Unquote(s) }
