// Package partitiontest is the behaviour suite every
// projection.PartitionProvider must pass. A provider's test calls Run with
// the provider and cases: messages and the keys they must map to.
//
//	partitiontest.Run(t, projection.AggregatePartitions{}, []partitiontest.Case{
//		{Msg: partitiontest.FeederMessage("wallet", "w1"), Want: "wallet/w1"},
//		{Msg: partitiontest.SubjectMessage("events.wallet.w1"), WantErr: true},
//	})
//
// Checked for every case:
//   - An error case fails with an error wrapping projection.ErrNoPartition.
//   - Otherwise Partition returns no error and a non-empty key: Want, when
//     set.
//   - Partition is deterministic: the same message, or a copy of it, gives
//     the same key or error again, also from several goroutines at once.
//   - Partition does not modify the message's header.
//
// And across the cases that are not error cases: messages of one partition
// (equal Group, which defaults to Want) get equal keys, and messages of
// different partitions get different keys — two aggregates that share a key
// would share state.
package partitiontest

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/projection"
)

// Case is one message and what the provider must make of it.
type Case struct {
	// Name names the case's subtest (default: its index and subject).
	Name string
	Msg  projection.Message
	// Want is the key Partition must return. Leave it empty when the exact
	// key is not part of the provider's contract (a hash, say) and set
	// Group instead.
	Want string
	// Group names the message's partition for the checks across cases
	// (default Want): cases with equal Groups must get equal keys, cases
	// with different Groups different keys.
	Group string
	// WantErr: Partition must fail with an error wrapping
	// projection.ErrNoPartition.
	WantErr bool
}

func (c Case) group() string {
	if c.Group != "" {
		return c.Group
	}
	return c.Want
}

// Run runs the suite against p with cases.
func Run(t *testing.T, p projection.PartitionProvider, cases []Case) {
	t.Helper()
	if len(cases) == 0 {
		t.Fatal("partitiontest: no cases")
	}
	var problems []error
	for i, c := range cases {
		if !c.WantErr && c.group() == "" {
			problems = append(problems, fmt.Errorf("case %d (%s): set Want or Group", i, c.Msg.Subject))
		}
		if c.WantErr && (c.Want != "" || c.Group != "") {
			problems = append(problems, fmt.Errorf("case %d (%s): WantErr with Want or Group", i, c.Msg.Subject))
		}
	}
	if err := errors.Join(problems...); err != nil {
		t.Fatalf("partitiontest: bad cases: %v", err)
	}

	keys := make([]string, len(cases))
	for i, c := range cases {
		name := c.Name
		if name == "" {
			name = fmt.Sprintf("%d_%s", i, c.Msg.Subject)
		}
		t.Run(name, func(t *testing.T) {
			keys[i] = checkCase(t, p, c)
		})
	}

	t.Run("Groups", func(t *testing.T) {
		// One key per group, one group per key.
		keyOf := map[string]int{}   // group → first case
		groupOf := map[string]int{} // key → first case
		for i, c := range cases {
			if c.WantErr || keys[i] == "" {
				continue
			}
			g := c.group()
			if j, ok := keyOf[g]; ok && keys[j] != keys[i] {
				t.Errorf("cases %d and %d are both of partition %q but got keys %q and %q", j, i, g, keys[j], keys[i])
			} else if !ok {
				keyOf[g] = i
			}
			if j, ok := groupOf[keys[i]]; ok && cases[j].group() != g {
				t.Errorf("cases %d (%s) and %d (%s) are of partitions %q and %q but both got key %q",
					j, cases[j].Msg.Subject, i, c.Msg.Subject, cases[j].group(), g, keys[i])
			} else if !ok {
				groupOf[keys[i]] = i
			}
		}
	})
}

// checkCase checks one case and returns its key ("" for an error).
func checkCase(t *testing.T, p projection.PartitionProvider, c Case) string {
	t.Helper()
	before := cloneHeader(c.Msg.Header)
	key, err := p.Partition(c.Msg)
	if !reflect.DeepEqual(c.Msg.Header, before) {
		t.Errorf("Partition modified the header: %v, was %v", c.Msg.Header, before)
	}
	if c.WantErr {
		if !errors.Is(err, projection.ErrNoPartition) {
			t.Errorf("Partition(%s) = %q, %v; want an error wrapping ErrNoPartition", c.Msg.Subject, key, err)
		}
	} else {
		switch {
		case err != nil:
			t.Errorf("Partition(%s): %v", c.Msg.Subject, err)
		case key == "":
			t.Errorf("Partition(%s) returned an empty key", c.Msg.Subject)
		case c.Want != "" && key != c.Want:
			t.Errorf("Partition(%s) = %q, want %q", c.Msg.Subject, key, c.Want)
		}
	}

	// Deterministic: again, on a copy, and from several goroutines.
	same := func(what string, k string, e error) {
		if k != key || (e == nil) != (err == nil) || (e != nil && errors.Is(e, projection.ErrNoPartition) != errors.Is(err, projection.ErrNoPartition)) {
			t.Errorf("Partition(%s) %s = %q, %v; first call gave %q, %v", c.Msg.Subject, what, k, e, key, err)
		}
	}
	k, e := p.Partition(c.Msg)
	same("again", k, e)
	cp := c.Msg
	cp.Header = cloneHeader(c.Msg.Header)
	cp.Data = slices.Clone(c.Msg.Data)
	k, e = p.Partition(cp)
	same("on a copy", k, e)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range 4 {
		wg.Go(func() {
			k, e := p.Partition(c.Msg)
			mu.Lock()
			defer mu.Unlock()
			same("from another goroutine", k, e)
		})
	}
	wg.Wait()
	if err != nil {
		return ""
	}
	return key
}

func cloneHeader(h nats.Header) nats.Header {
	if h == nil {
		return nil
	}
	c := make(nats.Header, len(h))
	for k, v := range h {
		c[k] = slices.Clone(v)
	}
	return c
}

var position atomic.Int64

// recordedAt is the time of the events the helpers build.
var recordedAt = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)

// FeederMessage is the message a feeder publishes for a new event of the
// aggregate (aggType, aggID), built with eventmsg.New under the "events"
// prefix. Each call makes a different event (its own position) of the same
// aggregate.
func FeederMessage(aggType, aggID string) projection.Message {
	return FeederEvent(eventstore.Event{AggregateType: aggType, AggregateID: aggID})
}

// FeederEvent is the message a feeder publishes for e. A zero Position,
// Version, Type, Payload or RecordedAt is filled in.
func FeederEvent(e eventstore.Event) projection.Message {
	if e.Position == 0 {
		e.Position = position.Add(1)
	}
	if e.Version == 0 {
		e.Version = 1
	}
	if e.Type == "" {
		e.Type = "SuiteEvent"
	}
	if e.Payload == nil {
		e.Payload = json.RawMessage(`{}`)
	}
	if e.RecordedAt.IsZero() {
		e.RecordedAt = recordedAt
	}
	m, err := eventmsg.New(contract.EventsPrefix, e)
	if err != nil {
		panic(fmt.Sprintf("partitiontest: eventmsg.New: %v", err))
	}
	return projection.Message{Subject: m.Subject, Header: m.Header, Data: m.Data, Sequence: uint64(e.Position), Time: e.RecordedAt}
}

// SubjectMessage is a message on subject with no header and no data, as a
// publisher other than the feeder might send.
func SubjectMessage(subj string) projection.Message {
	return projection.Message{Subject: subj, Sequence: uint64(position.Add(1)), Time: recordedAt}
}

// Without is m with the named headers removed; m is not modified.
func Without(m projection.Message, headers ...string) projection.Message {
	m.Header = cloneHeader(m.Header)
	for _, h := range headers {
		delete(m.Header, h)
	}
	return m
}

// WithHeader is m with header name set to values; m is not modified.
func WithHeader(m projection.Message, name string, values ...string) projection.Message {
	h := cloneHeader(m.Header)
	if h == nil {
		h = nats.Header{}
	}
	h[name] = values
	m.Header = h
	return m
}
