package projector_test

import (
	"context"
	"fmt"
	"hash/fnv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
	"github.com/jetproj/jetproj/pkg/projector/partitiontest"
	"github.com/jetproj/jetproj/pkg/projector/sourcetest"
)

var sourceSeq atomic.Int64

// jetStreamSourceHarness gives each subtest its own stream on one server:
// src<n>.> is what the source reads, oth<n>.> lands in the same stream.
func jetStreamSourceHarness(js jetstream.JetStream, buffer int) sourcetest.Harness {
	return sourcetest.Harness{New: func(t *testing.T) sourcetest.Env {
		n := sourceSeq.Add(1)
		prefix, other := fmt.Sprintf("src%d", n), fmt.Sprintf("oth%d", n)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        fmt.Sprintf("SRC_%d", n),
			Subjects:    []string{prefix + ".>", other + ".>"},
			AllowDirect: true,
		})
		if err != nil {
			t.Fatalf("create stream: %v", err)
		}
		publish := func(subject string, header nats.Header, data []byte) uint64 {
			t.Helper()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: header, Data: data})
			if err != nil {
				t.Fatalf("publish %s: %v", subject, err)
			}
			return ack.Sequence
		}
		src := &projector.JetStreamSource{Stream: stream, Subjects: []string{prefix + ".>"}, Buffer: buffer}
		return sourcetest.Env{Source: src, Prefix: prefix, Other: other + ".x", Publish: publish}
	}}
}

// TestJetStreamSourceSuite runs the Source suite against the built-in
// JetStreamSource, with its default buffer and with one small enough that
// the consumer pulls many times.
func TestJetStreamSourceSuite(t *testing.T) {
	t.Parallel()
	_, js := devtest.Connect(t, devtest.NATS(t))
	t.Run("DefaultBuffer", func(t *testing.T) {
		t.Parallel()
		sourcetest.Run(t, jetStreamSourceHarness(js, 0))
	})
	t.Run("SmallBuffer", func(t *testing.T) {
		t.Parallel()
		sourcetest.Run(t, jetStreamSourceHarness(js, 4))
	})
}

// aggregateCases are feeder messages and the partitions AggregatePartitions
// must place them in.
func aggregateCases() []partitiontest.Case {
	fm := partitiontest.FeederMessage
	long := strings.Repeat("x", 300) // too long for a subject token: hashed
	return []partitiontest.Case{
		{Name: "Plain", Msg: fm("wallet", "w1"), Want: "wallet/w1"},
		{Name: "SameAggregateLaterEvent", Msg: fm("wallet", "w1"), Want: "wallet/w1"},
		{Name: "OtherID", Msg: fm("wallet", "w2"), Want: "wallet/w2"},
		{Name: "OtherType", Msg: fm("order", "w1"), Want: "order/w1"},
		{Name: "DotsAndSpaces", Msg: fm("wallet", "a.b c"), Want: "wallet/a.b c"},
		{Name: "DotsAndSpacesLikeASubject", Msg: fm("wallet", "a.b.c"), Want: "wallet/a.b.c"},
		{Name: "Unicode", Msg: fm("wållet", "ключ-🔑"), Want: "w%C3%A5llet/ключ-🔑"},
		{Name: "Wildcards", Msg: fm("wallet", "*>"), Want: "wallet/*>"},
		{Name: "ControlCharacter", Msg: fm("wallet", "a\nb"), Want: "wallet/a\nb"},
		{Name: "HashedSubject", Msg: fm("wallet", long), Want: "wallet/" + long},
		{Name: "EmptyID", Msg: fm("wallet", ""), Want: "wallet/"},
		{Name: "EmptyTypeAndID", Msg: fm("", ""), Want: "~/"},
		{Name: "BareX", Msg: fm("wallet", "x"), Want: "wallet/x"},
		// An id that looks quoted is not the id without the quotes.
		{Name: "QuotedLookingID", Msg: fm("wallet", `"x"`), Want: `wallet/"x"`},
		{Name: "LeadingSpace", Msg: fm("wallet", " x"), Want: "wallet/ x"},
		{Name: "TrailingSpace", Msg: fm("wallet", "x "), Want: "wallet/x "},
		// Type "a/b" id "c" and type "a" id "b/c" are two aggregates: they
		// must not share a key. The exact key is the provider's business.
		{Name: "SlashInType", Msg: fm("a/b", "c"), Group: "type a/b, id c"},
		{Name: "SlashInID", Msg: fm("a", "b/c"), Group: "type a, id b/c"},

		{Name: "NoHeaders", Msg: partitiontest.SubjectMessage("events.wallet.w1"), WantErr: true},
		{Name: "NoAggregateID", Msg: partitiontest.Without(fm("wallet", "w1"), contract.HeaderAggregateID), WantErr: true},
		{Name: "NoAggregateType", Msg: partitiontest.Without(fm("wallet", "w1"), contract.HeaderAggregateType), WantErr: true},
		{Name: "AggregateIDWithoutValues", Msg: partitiontest.WithHeader(fm("wallet", "w1"), contract.HeaderAggregateID), WantErr: true},
	}
}

// TestAggregatePartitionsSuite runs the PartitionProvider suite against
// AggregatePartitions, on feeder messages as built and as a JetStream
// source returns them after a trip through the server.
func TestAggregatePartitionsSuite(t *testing.T) {
	t.Parallel()
	t.Run("Built", func(t *testing.T) {
		partitiontest.Run(t, projection.AggregatePartitions{}, aggregateCases())
	})
	t.Run("ThroughJetStream", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		_, js := devtest.Connect(t, devtest.NATS(t))
		stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: contract.EventsStream, Subjects: []string{contract.AllEvents}, AllowDirect: true})
		if err != nil {
			t.Fatal(err)
		}
		src := &projector.JetStreamSource{Stream: stream, Subjects: []string{contract.AllEvents}}
		cases := aggregateCases()
		for i, c := range cases {
			ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: c.Msg.Subject, Header: c.Msg.Header, Data: c.Msg.Data})
			if err != nil {
				t.Fatalf("publish case %s: %v", c.Name, err)
			}
			m, err := src.Next(ctx, c.Msg.Subject, ack.Sequence)
			if err != nil || m.Sequence != ack.Sequence {
				t.Fatalf("read case %s back: %d, %v; want sequence %d", c.Name, m.Sequence, err, ack.Sequence)
			}
			cases[i].Msg = m
		}
		partitiontest.Run(t, projection.AggregatePartitions{}, cases)
	})
}

// TestSubjectPartitionsSuite runs the PartitionProvider suite against
// SubjectPartitions with the Skip of a projection's derived events.
func TestSubjectPartitionsSuite(t *testing.T) {
	t.Parallel()
	sm := partitiontest.SubjectMessage
	partitiontest.Run(t, projection.SubjectPartitions{Skip: 2}, []partitiontest.Case{
		{Msg: sm("project.wallet_balance.wallet.w1"), Want: "wallet.w1"},
		{Msg: sm("project.wallet_balance.wallet.w1"), Want: "wallet.w1"},
		{Msg: sm("project.wallet_balance.wallet.w2"), Want: "wallet.w2"},
		{Msg: sm("project.other_projection.wallet.w1"), Want: "wallet.w1"},
		{Msg: sm("project.wallet_balance.w1"), Want: "w1"},
		{Msg: sm("project.wallet_balance.a.b.c.d"), Want: "a.b.c.d"},
		// The headers play no part: a feeder message is placed by subject.
		{Msg: partitiontest.FeederMessage("wallet", "a.b c"), Want: "a%2Eb%20c"},
		{Msg: sm("project.wallet_balance"), WantErr: true},
		{Msg: sm("project"), WantErr: true},
		{Msg: sm(""), WantErr: true},
	})
}

// TestGlobalPartitionsSuite runs the PartitionProvider suite against
// GlobalPartitions: everything in one partition.
func TestGlobalPartitionsSuite(t *testing.T) {
	t.Parallel()
	partitiontest.Run(t, projection.GlobalPartitions{}, []partitiontest.Case{
		{Msg: partitiontest.FeederMessage("wallet", "w1"), Want: projection.GlobalPartition},
		{Msg: partitiontest.FeederMessage("order", "o1"), Want: projection.GlobalPartition},
		{Msg: partitiontest.SubjectMessage("project.x.y"), Want: projection.GlobalPartition},
		{Msg: projection.Message{}, Want: projection.GlobalPartition},
	})
}

// TestPartitionFuncSuite runs the PartitionProvider suite against user
// functions: one with a documented key, one whose keys are hashes.
func TestPartitionFuncSuite(t *testing.T) {
	t.Parallel()
	sm := partitiontest.SubjectMessage
	t.Run("ByCustomer", func(t *testing.T) {
		// orders.<customer>.<order>: one partition per customer.
		byCustomer := projection.PartitionFunc(func(m projection.Message) (string, error) {
			toks := strings.Split(m.Subject, ".")
			if len(toks) != 3 || toks[0] != "orders" {
				return "", fmt.Errorf("%w: %s is not orders.<customer>.<order>", projection.ErrNoPartition, m.Subject)
			}
			return "customer/" + toks[1], nil
		})
		partitiontest.Run(t, byCustomer, []partitiontest.Case{
			{Msg: sm("orders.c1.o1"), Want: "customer/c1"},
			{Msg: sm("orders.c1.o2"), Want: "customer/c1"},
			{Msg: sm("orders.c2.o1"), Want: "customer/c2"},
			{Msg: sm("orders.c1"), WantErr: true},
			{Msg: sm("invoices.c1.i1"), WantErr: true},
		})
	})
	t.Run("Hashed", func(t *testing.T) {
		hashed := projection.PartitionFunc(func(m projection.Message) (string, error) {
			id := m.Header.Get(contract.HeaderAggregateID)
			if id == "" {
				return "", fmt.Errorf("%w: no aggregate id on %s", projection.ErrNoPartition, m.Subject)
			}
			h := fnv.New64a()
			h.Write([]byte(id))
			return fmt.Sprintf("%016x", h.Sum64()), nil
		})
		fm := partitiontest.FeederMessage
		partitiontest.Run(t, hashed, []partitiontest.Case{
			{Msg: fm("wallet", "w1"), Group: "w1"},
			{Msg: fm("order", "w1"), Group: "w1"},
			{Msg: fm("wallet", "w2"), Group: "w2"},
			{Msg: fm("wallet", "a.b c"), Group: "a.b c"},
			{Msg: sm("events.wallet.w1"), WantErr: true},
		})
	})
}
