// Package sourcetest is the behaviour suite every projection.Source must
// pass. A source's own test calls Run with a Harness whose New returns, for
// each subtest, a fresh, empty source and a way to publish into the log
// behind it:
//
//	func TestJetStreamSourceSuite(t *testing.T) {
//		_, js := devtest.Connect(t, devtest.NATS(t))
//		sourcetest.Run(t, sourcetest.Harness{New: func(t *testing.T) sourcetest.Env {
//			// a stream of its own on "<prefix>.>" and "<other>.>" …
//			return sourcetest.Env{Source: src, Prefix: prefix, Other: other + ".x", Publish: publish}
//		}})
//	}
//
// Every case runs as a parallel subtest with its own Env, so sources that
// share one server must keep their subjects apart.
//
// The contract, checked for every source:
//   - Head is 0 for an empty source; after publishes it is the sequence of
//     the last matching message (or, when a message outside the source's
//     subjects came last, at most that message's sequence).
//   - Consume(from) delivers every message under Prefix with sequence ≥
//     from, in sequence order, exactly once, and no message outside Prefix;
//     messages published while it runs arrive too. deliver is called from
//     one goroutine at a time.
//   - deliver may block for as long as it likes (backpressure): no message
//     is lost, repeated or reordered.
//   - No deliver call runs after Stop returns, including one that was
//     blocked when Stop was called; Stop may be called twice. Consume can
//     be called again after Stop, from any sequence, also an already
//     delivered one.
//   - Next(subject, from) returns the first message on subject with
//     sequence ≥ from, ErrNoMessage past the last one and for a subject
//     with no message; walking it with from = previous sequence + 1 visits
//     the subject's messages in order.
//   - A Message carries its Subject, the published Header (the source may
//     add headers of its own) and Data, its Sequence and a non-zero Time;
//     Next and Consume return the same fields for the same message.
package sourcetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projection"
)

// Env is one fresh source and the log behind it.
type Env struct {
	// Source reads every subject under Prefix (Prefix+".>") and nothing
	// else. It must be empty: no message has been published to it yet.
	Source projection.Source
	// Prefix is the subject prefix the source reads, e.g. "orders": the
	// suite publishes to "orders.a", "orders.b.c" ….
	Prefix string
	// Other is a literal subject outside the source's subjects whose
	// messages go into the same log, so they take sequences between the
	// source's messages, e.g. "audit.x".
	Other string
	// Publish appends a message to the log and returns its sequence. It
	// must accept subjects under Prefix and Other; header may be nil. It
	// fails t on error.
	Publish func(subject string, header nats.Header, data []byte) uint64
}

// Harness gives the suite what it needs to exercise one Source
// implementation.
type Harness struct {
	// New returns a fresh Env for one subtest. Everything it starts must be
	// stopped with t.Cleanup.
	New func(t *testing.T) Env
}

const (
	// timeout bounds each case; the cases wait on the source, never on a
	// clock.
	timeout = 30 * time.Second
	// quiet is how long the suite gives a misbehaving source to show that
	// Stop returns while a deliver call is still running. It is a window for
	// a bug to show, not a synchronisation: a correct source passes however
	// long it is.
	quiet = 300 * time.Millisecond
)

// Run runs the suite against the sources h makes, one per subtest.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil {
		t.Fatal("sourcetest: Harness.New is nil")
	}
	s := &suite{h: h}
	cases := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"Head", s.head},
		{"ConsumeFromStart", s.consumeFromStart},
		{"ConsumeFromMiddle", s.consumeFromMiddle},
		{"ConsumeLive", s.consumeLive},
		{"ConsumeFromHeadPlusOne", s.consumeFromHeadPlusOne},
		{"Backpressure", s.backpressure},
		{"Stop", s.stop},
		{"StopWaitsForBlockedDeliver", s.stopWaitsForBlockedDeliver},
		{"ConsumeAgainAfterStop", s.consumeAgainAfterStop},
		{"Next", s.next},
		{"NextOnEmptySource", s.nextOnEmptySource},
		{"MessageFields", s.messageFields},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t)
		})
	}
}

type suite struct{ h Harness }

// setup returns a fresh Env, checked, and a context for the case.
func (s *suite) setup(t *testing.T) (Env, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	env := s.h.New(t)
	var problems []error
	if env.Source == nil {
		problems = append(problems, errors.New("Env.Source is nil"))
	}
	if env.Prefix == "" {
		problems = append(problems, errors.New("Env.Prefix is empty"))
	}
	if env.Other == "" {
		problems = append(problems, errors.New("Env.Other is empty"))
	}
	if env.Publish == nil {
		problems = append(problems, errors.New("Env.Publish is nil"))
	}
	if err := errors.Join(problems...); err != nil {
		t.Fatalf("sourcetest: bad Env: %v", err)
	}
	return env, ctx
}

// sent is a message the suite published, as a source must return it.
type sent struct {
	subject string
	header  nats.Header
	data    []byte
	seq     uint64
}

var sentSeq atomic.Int64

// pub publishes a message with a header and data that identify it.
func pub(env Env, subject string) sent {
	n := strconv.FormatInt(sentSeq.Add(1), 10)
	h := nats.Header{"Suite-Msg": {n}, "Suite-Multi": {"one", "two"}}
	data := []byte(`{"msg":` + n + `}`)
	return sent{subject: subject, header: h, data: data, seq: env.Publish(subject, h, data)}
}

// pubN publishes n messages under the prefix, on subjects that differ.
func pubN(env Env, n int) []sent {
	out := make([]sent, n)
	for i := range out {
		out[i] = pub(env, fmt.Sprintf("%s.s%d", env.Prefix, i%3))
	}
	return out
}

// recorder is a deliver function that records what it gets.
type recorder struct {
	mu   sync.Mutex
	msgs []projection.Message
	// block, when set, runs inside deliver before the message is recorded.
	block func(projection.Message)

	inflight  atomic.Int32
	overlap   atomic.Bool  // two deliver calls ran at once
	stopped   atomic.Bool  // set by the suite when Stop has returned
	afterStop atomic.Int32 // deliver calls that began after Stop returned
}

func (r *recorder) deliver(m projection.Message) {
	if r.inflight.Add(1) > 1 {
		r.overlap.Store(true)
	}
	defer r.inflight.Add(-1)
	if r.stopped.Load() {
		r.afterStop.Add(1)
	}
	if r.block != nil {
		r.block(m)
	}
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
}

func (r *recorder) got() []projection.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// waitSeq waits until the recorder has a message with sequence ≥ seq.
func (r *recorder) waitSeq(t *testing.T, seq uint64) {
	t.Helper()
	devtest.Eventually(t, timeout, func() error {
		msgs := r.got()
		if len(msgs) > 0 && msgs[len(msgs)-1].Sequence >= seq {
			return nil
		}
		return fmt.Errorf("waiting for sequence %d: got %s", seq, seqs(msgs))
	})
}

// checkOneGoroutine reports deliver calls that overlapped.
func (r *recorder) checkOneGoroutine(t *testing.T) {
	t.Helper()
	if r.overlap.Load() {
		t.Error("deliver was called from two goroutines at once")
	}
}

func consume(t *testing.T, ctx context.Context, env Env, from uint64, r *recorder) projection.Subscription {
	t.Helper()
	sub, err := env.Source.Consume(ctx, from, r.deliver)
	if err != nil {
		t.Fatalf("Consume(%d): %v", from, err)
	}
	if sub == nil {
		t.Fatalf("Consume(%d) returned a nil Subscription", from)
	}
	t.Cleanup(sub.Stop)
	return sub
}

// settle publishes a sentinel under the prefix and waits for it, then
// checks that the recorder got exactly want and the sentinel, in order, and
// that the subscription reported no error.
func settle(t *testing.T, env Env, r *recorder, sub projection.Subscription, want []sent) {
	t.Helper()
	sentinel := pub(env, env.Prefix+".sentinel")
	r.waitSeq(t, sentinel.seq)
	assertMessages(t, r.got(), append(slices.Clone(want), sentinel))
	r.checkOneGoroutine(t)
	select {
	case err := <-sub.Err():
		t.Errorf("Err() reported %v during normal delivery", err)
	default:
	}
}

// assertMessages checks that got is exactly want, in order, field by field.
func assertMessages(t *testing.T, got []projection.Message, want []sent) {
	t.Helper()
	if len(got) != len(want) || !slices.EqualFunc(got, want, func(m projection.Message, s sent) bool { return m.Sequence == s.seq }) {
		t.Fatalf("delivered sequences %s, want %s", seqs(got), sentSeqs(want))
	}
	for i := range got {
		assertMessage(t, "delivered", got[i], want[i])
	}
}

func assertMessage(t *testing.T, what string, got projection.Message, want sent) {
	t.Helper()
	if got.Sequence != want.seq {
		t.Errorf("%s: Sequence = %d, want %d", what, got.Sequence, want.seq)
		return
	}
	if got.Subject != want.subject {
		t.Errorf("%s seq %d: Subject = %q, want %q", what, want.seq, got.Subject, want.subject)
	}
	if string(got.Data) != string(want.data) {
		t.Errorf("%s seq %d: Data = %q, want %q", what, want.seq, got.Data, want.data)
	}
	for k, vs := range want.header {
		if !slices.Equal(got.Header.Values(k), vs) {
			t.Errorf("%s seq %d: Header[%q] = %q, want %q (header %v)", what, want.seq, k, got.Header.Values(k), vs, got.Header)
		}
	}
	if got.Time.IsZero() {
		t.Errorf("%s seq %d: Time is zero", what, want.seq)
	} else if d := time.Since(got.Time); d < -time.Minute || d > time.Hour {
		t.Errorf("%s seq %d: Time = %v, %v from now", what, want.seq, got.Time, d)
	}
}

func seqs(msgs []projection.Message) string {
	out := make([]uint64, len(msgs))
	for i, m := range msgs {
		out[i] = m.Sequence
	}
	return fmt.Sprint(out)
}

func sentSeqs(msgs []sent) string {
	out := make([]uint64, len(msgs))
	for i, m := range msgs {
		out[i] = m.seq
	}
	return fmt.Sprint(out)
}

func head(t *testing.T, ctx context.Context, env Env) uint64 {
	t.Helper()
	h, err := env.Source.Head(ctx)
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	return h
}

func (s *suite) head(t *testing.T) {
	env, ctx := s.setup(t)
	if got := head(t, ctx, env); got != 0 {
		t.Fatalf("Head of an empty source = %d, want 0", got)
	}
	msgs := pubN(env, 3)
	if got, want := head(t, ctx, env), msgs[2].seq; got != want {
		t.Errorf("Head after 3 publishes = %d, want %d", got, want)
	}
	other := pub(env, env.Other)
	if got := head(t, ctx, env); got < msgs[2].seq || got > other.seq {
		t.Errorf("Head after a message outside the source = %d, want between %d and %d", got, msgs[2].seq, other.seq)
	}
	last := pub(env, env.Prefix+".last")
	if got := head(t, ctx, env); got != last.seq {
		t.Errorf("Head = %d, want %d", got, last.seq)
	}
}

// interleaved publishes messages under the prefix with messages on Other
// between them and returns the ones under the prefix.
func interleaved(env Env) []sent {
	var want []sent
	for i, subj := range []string{"a", "b", "a", "c.d.e", "b", "a"} {
		if i%2 == 0 {
			pub(env, env.Other)
		}
		want = append(want, pub(env, env.Prefix+"."+subj))
	}
	pub(env, env.Other)
	return want
}

func (s *suite) consumeFromStart(t *testing.T) {
	env, ctx := s.setup(t)
	want := interleaved(env)
	r := &recorder{}
	sub := consume(t, ctx, env, 1, r)
	settle(t, env, r, sub, want)
}

func (s *suite) consumeFromMiddle(t *testing.T) {
	env, ctx := s.setup(t)
	want := interleaved(env)
	t.Run("AtAMessage", func(t *testing.T) {
		r := &recorder{}
		sub := consume(t, ctx, env, want[3].seq, r)
		r.waitSeq(t, want[len(want)-1].seq)
		sub.Stop()
		assertMessages(t, r.got(), want[3:])
	})
	t.Run("AtAMessageOutsideTheSource", func(t *testing.T) {
		// interleaved put a message on Other just before want[4].
		from := want[4].seq - 1
		if from == want[3].seq {
			t.Fatalf("sequence %d is not outside the source", from)
		}
		r := &recorder{}
		sub := consume(t, ctx, env, from, r)
		r.waitSeq(t, want[len(want)-1].seq)
		sub.Stop()
		assertMessages(t, r.got(), want[4:])
	})
}

func (s *suite) consumeLive(t *testing.T) {
	env, ctx := s.setup(t)
	before := pubN(env, 3)
	r := &recorder{}
	sub := consume(t, ctx, env, 1, r)
	r.waitSeq(t, before[2].seq)
	after := pubN(env, 3)
	pub(env, env.Other)
	r.waitSeq(t, after[2].seq)
	settle(t, env, r, sub, append(before, after...))
}

func (s *suite) consumeFromHeadPlusOne(t *testing.T) {
	env, ctx := s.setup(t)
	pubN(env, 3)
	from := head(t, ctx, env) + 1
	r := &recorder{}
	sub := consume(t, ctx, env, from, r)
	pub(env, env.Other)
	after := pubN(env, 3)
	settle(t, env, r, sub, after)
}

func (s *suite) backpressure(t *testing.T) {
	env, ctx := s.setup(t)
	const n = 300
	first := pubN(env, n/2)
	// The first deliver call blocks until every message is published; the
	// later ones hand each message over to the test one by one, until
	// handedOver.
	release := make(chan struct{})
	handoff := make(chan uint64)
	quit := make(chan struct{})
	var once sync.Once
	var handedOver atomic.Bool
	r := &recorder{block: func(m projection.Message) {
		once.Do(func() {
			select {
			case <-release:
			case <-quit:
			}
		})
		if handedOver.Load() {
			return
		}
		select {
		case handoff <- m.Sequence:
		case <-quit:
		}
	}}
	sub := consume(t, ctx, env, 1, r)
	t.Cleanup(func() { close(quit) }) // runs before the Stop registered by consume
	waitInflight(t, r)
	var second []sent
	for range n / 2 {
		second = append(second, pub(env, env.Prefix+".late"))
		if len(second)%50 == 0 {
			pub(env, env.Other)
		}
	}
	want := append(first, second...)
	close(release)
	for i, w := range want {
		select {
		case seq := <-handoff:
			if seq != w.seq {
				t.Fatalf("message %d: delivered sequence %d, want %d", i, seq, w.seq)
			}
		case <-ctx.Done():
			t.Fatalf("message %d (sequence %d) not delivered: %v", i, w.seq, ctx.Err())
		}
	}
	handedOver.Store(true)
	settle(t, env, r, sub, want)
}

// waitInflight waits until a deliver call is running.
func waitInflight(t *testing.T, r *recorder) {
	t.Helper()
	devtest.Eventually(t, timeout, func() error {
		if r.inflight.Load() == 0 {
			return errors.New("deliver not called yet")
		}
		return nil
	})
}

func (s *suite) stop(t *testing.T) {
	env, ctx := s.setup(t)
	before := pubN(env, 3)
	r := &recorder{}
	sub := consume(t, ctx, env, 1, r)
	r.waitSeq(t, before[2].seq)
	sub.Stop()
	if n := r.inflight.Load(); n != 0 {
		t.Errorf("%d deliver call(s) running after Stop returned", n)
	}
	r.stopped.Store(true)
	sub.Stop() // a second Stop is safe and returns

	// Messages published after Stop do not reach the stopped subscription:
	// a second one reading them proves they were there to deliver.
	after := pubN(env, 3)
	r2 := &recorder{}
	sub2 := consume(t, ctx, env, after[0].seq, r2)
	settle(t, env, r2, sub2, after)
	if n := r.afterStop.Load(); n != 0 {
		t.Errorf("%d deliver call(s) after Stop returned", n)
	}
	assertMessages(t, r.got(), before)
}

func (s *suite) stopWaitsForBlockedDeliver(t *testing.T) {
	env, ctx := s.setup(t)
	msgs := pubN(env, 3)
	release := make(chan struct{})
	r := &recorder{}
	r.block = func(m projection.Message) {
		if m.Sequence == msgs[0].seq {
			<-release
		}
	}
	sub := consume(t, ctx, env, 1, r)
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // runs before the Stop registered by consume
	waitInflight(t, r)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		sub.Stop()
	}()
	select {
	case <-stopped:
		t.Errorf("Stop returned while a deliver call was still running (sequence %d blocked)", msgs[0].seq)
	case <-time.After(quiet):
	}
	unblock()
	select {
	case <-stopped:
	case <-ctx.Done():
		t.Fatalf("Stop did not return after deliver did: %v", ctx.Err())
	}
	if n := r.inflight.Load(); n != 0 {
		t.Errorf("%d deliver call(s) running after Stop returned", n)
	}
	r.stopped.Store(true)
	after := pubN(env, 2)
	r2 := &recorder{}
	sub2 := consume(t, ctx, env, after[0].seq, r2)
	settle(t, env, r2, sub2, after)
	if n := r.afterStop.Load(); n != 0 {
		t.Errorf("%d deliver call(s) after Stop returned", n)
	}
}

func (s *suite) consumeAgainAfterStop(t *testing.T) {
	env, ctx := s.setup(t)
	msgs := pubN(env, 6)
	r := &recorder{}
	sub := consume(t, ctx, env, 1, r)
	r.waitSeq(t, msgs[5].seq)
	sub.Stop()
	assertMessages(t, r.got(), msgs)

	t.Run("FromADeliveredSequence", func(t *testing.T) {
		r := &recorder{}
		sub := consume(t, ctx, env, msgs[2].seq, r)
		r.waitSeq(t, msgs[5].seq)
		sub.Stop()
		assertMessages(t, r.got(), msgs[2:])
	})
	t.Run("FromALaterSequence", func(t *testing.T) {
		more := pubN(env, 3)
		r := &recorder{}
		sub := consume(t, ctx, env, more[1].seq, r)
		settle(t, env, r, sub, more[1:])
	})
}

func next(t *testing.T, ctx context.Context, env Env, subject string, from uint64) (projection.Message, error) {
	t.Helper()
	m, err := env.Source.Next(ctx, subject, from)
	if err != nil && !errors.Is(err, projection.ErrNoMessage) {
		t.Fatalf("Next(%q, %d): %v", subject, from, err)
	}
	return m, err
}

func (s *suite) next(t *testing.T) {
	env, ctx := s.setup(t)
	a := env.Prefix + ".a"
	b := env.Prefix + ".b"
	var as, bs []sent
	for i := range 4 {
		as = append(as, pub(env, a))
		pub(env, env.Other)
		if i%2 == 0 {
			bs = append(bs, pub(env, b))
		}
	}
	for _, c := range []struct {
		subject string
		msgs    []sent
	}{{a, as}, {b, bs}} {
		// Walk the subject from 1.
		from := uint64(1)
		for i, want := range c.msgs {
			m, err := next(t, ctx, env, c.subject, from)
			if err != nil {
				t.Fatalf("Next(%q, %d) (message %d): %v", c.subject, from, i, err)
			}
			assertMessage(t, fmt.Sprintf("Next(%q, %d)", c.subject, from), m, want)
			from = m.Sequence + 1
		}
		if _, err := next(t, ctx, env, c.subject, from); !errors.Is(err, projection.ErrNoMessage) {
			t.Errorf("Next(%q, %d) past the last message: %v, want ErrNoMessage", c.subject, from, err)
		}
		// from is inclusive, and lands on the next message when between.
		for i, want := range c.msgs {
			m, err := next(t, ctx, env, c.subject, want.seq)
			if err != nil {
				t.Fatalf("Next(%q, %d): %v", c.subject, want.seq, err)
			}
			assertMessage(t, fmt.Sprintf("Next(%q, %d)", c.subject, want.seq), m, want)
			if i > 0 && want.seq-c.msgs[i-1].seq > 1 {
				between := c.msgs[i-1].seq + 1
				m, err := next(t, ctx, env, c.subject, between)
				if err != nil {
					t.Fatalf("Next(%q, %d): %v", c.subject, between, err)
				}
				assertMessage(t, fmt.Sprintf("Next(%q, %d)", c.subject, between), m, want)
			}
		}
	}
	h := head(t, ctx, env)
	for _, c := range []struct {
		subject string
		from    uint64
	}{
		{env.Prefix + ".nobody", 1},
		{env.Prefix + ".a.deeper", 1},
		{a, h + 1},
		{a, h + 1000},
	} {
		if _, err := next(t, ctx, env, c.subject, c.from); !errors.Is(err, projection.ErrNoMessage) {
			t.Errorf("Next(%q, %d): %v, want ErrNoMessage", c.subject, c.from, err)
		}
	}
}

func (s *suite) nextOnEmptySource(t *testing.T) {
	env, ctx := s.setup(t)
	if _, err := next(t, ctx, env, env.Prefix+".a", 1); !errors.Is(err, projection.ErrNoMessage) {
		t.Errorf("Next on an empty source: %v, want ErrNoMessage", err)
	}
}

func (s *suite) messageFields(t *testing.T) {
	env, ctx := s.setup(t)
	msgs := []sent{
		pub(env, env.Prefix+".full"),
		{subject: env.Prefix + ".bare", seq: env.Publish(env.Prefix+".bare", nil, nil)},
		{subject: env.Prefix + ".binary", data: []byte{0, 1, 2, 0xff, '\n'}, header: nats.Header{"Suite-Space": {"a b"}}},
	}
	msgs[2].seq = env.Publish(msgs[2].subject, msgs[2].header, msgs[2].data)
	r := &recorder{}
	sub := consume(t, ctx, env, 1, r)
	settle(t, env, r, sub, msgs)
	// Next returns what Consume delivered, field by field.
	for _, d := range r.got()[:len(msgs)] {
		m, err := next(t, ctx, env, d.Subject, d.Sequence)
		if err != nil {
			t.Fatalf("Next(%q, %d): %v", d.Subject, d.Sequence, err)
		}
		if m.Subject != d.Subject || m.Sequence != d.Sequence || string(m.Data) != string(d.Data) || !m.Time.Equal(d.Time) {
			t.Errorf("Next(%q, %d) = {%q %d %q %v}, Consume delivered {%q %d %q %v}", d.Subject, d.Sequence,
				m.Subject, m.Sequence, m.Data, m.Time, d.Subject, d.Sequence, d.Data, d.Time)
		}
		for k, vs := range d.Header {
			if !slices.Equal(m.Header.Values(k), vs) {
				t.Errorf("Next(%q, %d): Header[%q] = %q, Consume delivered %q", d.Subject, d.Sequence, k, m.Header.Values(k), vs)
			}
		}
	}
}
