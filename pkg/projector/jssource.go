package projector

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/pkg/projection"
)

// JetStreamSource is the built-in Source: an ordered consumer on a stream's
// subjects for Consume, direct get (next by subject) for Next.
type JetStreamSource struct {
	Stream   jetstream.Stream
	Subjects []string
	// Buffer is how many messages the consumer pulls ahead (default 1000).
	Buffer int
}

var _ projection.Source = (*JetStreamSource)(nil)

// NewJetStreamSource opens the named stream.
func NewJetStreamSource(ctx context.Context, js jetstream.JetStream, stream string, subjects []string) (*JetStreamSource, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("projector: source stream %s: %w", stream, err)
	}
	return &JetStreamSource{Stream: s, Subjects: subjects}, nil
}

type jsSub struct {
	cons    jetstream.Consumer
	cc      jetstream.ConsumeContext
	errs    chan error
	mu      sync.Mutex
	stopped bool
	running sync.WaitGroup
}

// Stop stops delivery and returns after any deliver call in progress. It
// waits for the client's consumer to stop for at most stopWait: nats.go's
// ordered consumer holds its lock while it recreates itself, retrying for
// as long as the server does not answer, and its Stop waits for that lock.
// No deliver call runs after Stop returns either way; the client's consumer
// stops on its own once its retry notices.
func (s *jsSub) Stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.cc.Stop()
		<-s.cc.Closed()
	}()
	t := time.NewTimer(stopWait)
	select {
	case <-done:
	case <-t.C:
	}
	t.Stop()
	s.running.Wait()
}

// stopWait bounds how long jsSub.Stop waits for the client's consumer.
const stopWait = 5 * time.Second

// enter reports whether a deliver call may run; exit must follow.
func (s *jsSub) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.running.Add(1)
	return true
}

func (s *jsSub) Err() <-chan error { return s.errs }

// Pending returns how many messages the server holds for the consumer that
// it has not delivered yet. While nats.go's ordered consumer recreates
// itself it holds its lock, and Pending waits for it (the runner does not).
func (s *jsSub) Pending(ctx context.Context) (uint64, error) {
	info, err := s.cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.NumPending, nil
}

// pullMaxBytes bounds the payload the consumer asks the server for at a
// time, whatever Buffer says: a stream of large messages cannot fill the
// client's memory.
const pullMaxBytes = 16 << 20

// Consume implements projection.Source.
func (s *JetStreamSource) Consume(ctx context.Context, from uint64, deliver func(projection.Message)) (projection.Subscription, error) {
	if from == 0 {
		from = 1
	}
	buf := s.Buffer
	if buf <= 0 {
		buf = 1000
	}
	// The caller retries a failed start on its own schedule; passing
	// trouble is logged once per episode and fails readiness meanwhile.
	op := "consume " + s.Stream.CachedInfo().Config.Name
	c, err := s.Stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: s.Subjects,
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from,
	})
	if err != nil {
		jsretry.FromContext(ctx).Failed(op, err)
		return nil, err
	}
	sub := &jsSub{cons: c, errs: make(chan error, 1)}
	cc, err := c.Consume(func(m jetstream.Msg) {
		if !sub.enter() {
			return
		}
		defer sub.running.Done()
		md, err := m.Metadata()
		if err != nil {
			return
		}
		deliver(projection.Message{Subject: m.Subject(), Header: m.Headers(), Data: m.Data(), Sequence: md.Sequence.Stream, Time: md.Timestamp, Pending: md.NumPending})
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		// The ordered consumer recreates itself after missed heartbeats
		// and deletions; only errors that end delivery are reported.
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			select {
			case sub.errs <- err:
			default:
			}
		}
	}), jetstream.PullMaxMessagesWithBytesLimit(buf, pullMaxBytes))
	if err != nil {
		jsretry.FromContext(ctx).Failed(op, err)
		return nil, err
	}
	jsretry.FromContext(ctx).Succeeded(op)
	sub.cc = cc
	return sub, nil
}

// Next implements projection.Source with a direct get. Passing JetStream
// trouble (the stream's leader moving, a node restarting) is waited for
// while ctx lasts (jsretry), so that it never counts as a failure of the
// partition being read.
func (s *JetStreamSource) Next(ctx context.Context, subject string, from uint64) (projection.Message, error) {
	if from == 0 {
		from = 1
	}
	raw, err := jsretry.Value(ctx, "read stream "+s.Stream.CachedInfo().Config.Name, func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		return s.Stream.GetMsg(ctx, from, jetstream.WithGetMsgSubject(subject))
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return projection.Message{}, projection.ErrNoMessage
	}
	if err != nil {
		return projection.Message{}, err
	}
	return projection.Message{Subject: raw.Subject, Header: raw.Header, Data: raw.Data, Sequence: raw.Sequence, Time: raw.Time}, nil
}

// Head implements projection.Source.
func (s *JetStreamSource) Head(ctx context.Context) (uint64, error) {
	info, err := s.Stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}
