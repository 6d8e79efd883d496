package projector_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// silentSource's first subscription delivers its first messages and then
// nothing more, though it goes on running and the server holds messages for
// it: a client library's consumer that stopped pulling and never said so.
type silentSource struct {
	*projector.JetStreamSource
	deliver  int // messages the first subscription delivers
	consumes atomic.Int32
	stopped  chan struct{} // closed when the first subscription went quiet
	// stuck: the first subscription does not answer Pending either (until
	// release is closed), as nats.go's ordered consumer does while it
	// retries recreating itself.
	stuck   bool
	release chan struct{}
	// erring: the first subscription's Pending fails, as a request about a
	// consumer lost with a node does, for ever.
	erring bool
}

func (s *silentSource) Consume(ctx context.Context, from uint64, deliver func(projection.Message)) (projection.Subscription, error) {
	if s.consumes.Add(1) > 1 {
		return s.JetStreamSource.Consume(ctx, from, deliver)
	}
	// After its first messages the subscription's consumer stops pulling:
	// the server keeps the others; no error is reported.
	sub := &silentSub{quiet: make(chan struct{}), stuck: s.stuck, release: s.release, erring: s.erring}
	var n atomic.Int32
	inner, err := s.JetStreamSource.Consume(ctx, from, func(m projection.Message) {
		switch k := int(n.Add(1)); {
		case k <= s.deliver:
			deliver(m)
		case k == s.deliver+1:
			close(sub.quiet)
		}
	})
	if err != nil {
		return nil, err
	}
	sub.Subscription = inner
	go func() {
		<-sub.quiet
		sub.once.Do(inner.Stop)
		close(s.stopped)
	}()
	return sub, nil
}

type silentSub struct {
	projection.Subscription
	quiet   chan struct{}
	once    sync.Once
	stuck   bool
	release chan struct{}
	erring  bool
}

func (s *silentSub) Stop() { s.once.Do(s.Subscription.Stop) }

func (s *silentSub) Pending(ctx context.Context) (uint64, error) {
	if s.stuck {
		<-s.release // ctx or not
		return 0, ctx.Err()
	}
	if s.erring {
		return 0, nats.ErrTimeout
	}
	return s.Subscription.(interface {
		Pending(context.Context) (uint64, error)
	}).Pending(ctx)
}

// A consumer that delivers nothing while the stream holds messages for it
// is restarted, and the projection catches up.
func TestSilentConsumerIsRestarted(t *testing.T) {
	t.Parallel()
	testQuietConsumer(t, quietness{})
}

// A consumer that delivers nothing and does not answer how many messages it
// has pending either (stuck in its client) is restarted too.
func TestStuckConsumerIsRestarted(t *testing.T) {
	t.Parallel()
	testQuietConsumer(t, quietness{stuck: true})
}

// A consumer that delivers nothing and whose every check fails (the server
// does not answer about it) is restarted after a few checks.
func TestUnansweredConsumerIsRestarted(t *testing.T) {
	t.Parallel()
	testQuietConsumer(t, quietness{erring: true})
}

// quietness is how the first subscription goes quiet (silentSource).
type quietness struct{ stuck, erring bool }

// testQuietConsumer runs a projection whose first subscription goes quiet
// as how says, and checks that it catches up.
func testQuietConsumer(t *testing.T, how quietness) {
	b := setup(t)
	js, err := projector.NewJetStreamSource(context.Background(), b.js, "EVENTS", []string{"events.wallet.*"})
	if err != nil {
		t.Fatal(err)
	}
	src := &silentSource{JetStreamSource: js, deliver: 5, stopped: make(chan struct{}), stuck: how.stuck, erring: how.erring, release: make(chan struct{})}
	t.Cleanup(func() { close(src.release) })
	def := walletBalance("wallet_balance", projection.FromSource(src))
	b.publishWallets(t, 20, 1)
	b.runWith(t, projector.WithConsumerCheck(projector.Options{Replica: "r1", LeaseTTL: 2 * time.Second, Logger: testLogger(t)}, 200*time.Millisecond), def)
	// Events published after it went quiet wait on the server.
	select {
	case <-src.stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("the first subscription did not go quiet")
	}
	for i := range 5 {
		b.publish(t, fmt.Sprintf("w%d", i), "MoneyWasAddedToWallet", `{"amount":1}`)
	}
	b.waitFold(t, "wallet_balance", 30*time.Second)
	if n := src.consumes.Load(); n < 2 {
		t.Fatalf("consumer started %d times, want a restart", n)
	}
}
