package projector

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/projection"
)

// maxBatchBytes bounds the payload of a batch.
const maxBatchBytes = 8 << 20

// catchUpSize is the most messages a batch takes while catching up
// (projection.CatchUpBatchSize): commits, flushes and derived events per
// partition drop; batches at the head stay BatchSize, for latency.
func (r *runner) catchUpSize() int { return max(r.spec.BatchSize, r.spec.CatchUpBatchSize) }

// collect takes the batch that starts with first from the consumer:
// BatchSize messages, or while far behind (first.Pending tells) up to
// catchUpSize, waiting briefly for those that are on their way.
func (r *runner) collect(first projection.Message) []projection.Message {
	limit := r.spec.BatchSize
	if first.Pending >= uint64(limit) {
		limit = r.catchUpSize()
	}
	if cap(r.batch) < limit {
		r.batch = make([]projection.Message, 0, limit)
	}
	batch := append(r.batch[:0], first)
	size := len(first.Data)
	var wait *time.Timer
	defer func() {
		if wait != nil {
			wait.Stop()
		}
	}()
	for len(batch) < limit && size < maxBatchBytes {
		select {
		case m := <-r.cons.msgs:
			batch, size = append(batch, m), size+len(m.Data)
			continue
		default:
		}
		if len(batch) < r.spec.BatchSize || batch[len(batch)-1].Pending == 0 {
			break // an ordinary batch, or nothing more to come
		}
		// Catching up and the consumer is a little behind us.
		if wait == nil {
			wait = time.NewTimer(catchUpWait)
		}
		select {
		case m := <-r.cons.msgs:
			batch, size = append(batch, m), size+len(m.Data)
			continue
		case <-wait.C:
		}
		break
	}
	r.batch = batch
	r.cons.took(size)
	return batch
}

// catchUpWait bounds how long a catch-up batch waits for more messages.
const catchUpWait = 5 * time.Millisecond

// consumer is the source's subscription feeding a channel.
type consumer struct {
	sub  projection.Subscription
	msgs chan projection.Message
	stop chan struct{}
	// bytes is the payload waiting in msgs; delivery waits while it is
	// over maxBufferedBytes, until the loop takes messages (room).
	bytes atomic.Int64
	room  chan struct{}
	gauge prometheus.Gauge // bytes, exported
}

// maxBufferedBytes bounds the payload a consumer holds for the loop, on top
// of the batch being handled: messages of up to the server's max_payload
// (1 MiB by default) would otherwise let thousands of buffered messages
// take gigabytes.
const maxBufferedBytes = 32 << 20

// took tells the consumer's delivery that the loop took n bytes.
func (c *consumer) took(n int) {
	c.bytes.Add(-int64(n))
	c.gauge.Sub(float64(n))
	select {
	case c.room <- struct{}{}:
	default:
	}
}

func (r *runner) startConsumer(ctx context.Context) error {
	start := r.restartAt
	if start == 0 {
		start = r.next
	}
	if start == 0 {
		start = 1
	}
	r.stopConsumer()
	cons := &consumer{msgs: make(chan projection.Message, r.catchUpSize()+r.spec.BatchSize), stop: make(chan struct{}), room: make(chan struct{}, 1),
		gauge: r.metrics.buffered.WithLabelValues(r.def.Name())}
	sub, err := r.source.Consume(ctx, start, func(m projection.Message) {
		for cons.bytes.Load() > maxBufferedBytes {
			select {
			case <-cons.room:
			case <-cons.stop:
				return
			}
		}
		cons.bytes.Add(int64(len(m.Data)))
		cons.gauge.Add(float64(len(m.Data)))
		select {
		case cons.msgs <- m:
		case <-cons.stop:
		}
	})
	if err != nil {
		return fmt.Errorf("projector: consume %s: %w", r.def.Name(), err)
	}
	cons.sub = sub
	r.cons, r.next, r.restartAt = cons, start, 0
	return nil
}

func (r *runner) stopConsumer() {
	if r.cons == nil {
		return
	}
	close(r.cons.stop)
	r.cons.sub.Stop()
	r.cons.gauge.Sub(float64(r.cons.bytes.Load())) // what it held goes with it
	r.cons = nil
}

// msgMeta extracts what handlers see from a message.
func (r *runner) msgMeta(m projection.Message) (projection.Meta, error) {
	key, err := r.parts_.Partition(m)
	if err != nil {
		return projection.Meta{}, err
	}
	if key == "" {
		return projection.Meta{}, fmt.Errorf("%w: empty key for %s", projection.ErrNoPartition, m.Subject)
	}
	meta := projection.Meta{Subject: m.Subject, Sequence: m.Sequence, Raw: m.Data, RecordedAt: m.Time, Partition: key}
	h := m.Header
	meta.Type = h.Get(contract.HeaderEventType)
	meta.TraceParent = h.Get(contract.HeaderTraceParent)
	meta.MsgID = h.Get(nats.MsgIdHdr)
	if h.Get(contract.HeaderEventPosition) != "" && h.Get(contract.HeaderAggregateVersion) != "" {
		e, err := eventmsg.Parse(&nats.Msg{Subject: m.Subject, Header: h, Data: m.Data})
		if err == nil {
			meta.AggregateType, meta.AggregateID, meta.Version, meta.Position = e.AggregateType, e.AggregateID, e.Version, e.Position
			meta.RecordedAt, meta.Metadata = e.RecordedAt, e.Metadata
			return meta, nil
		}
	}
	if p := h.Get(contract.HeaderEventPosition); p != "" {
		meta.Position, _ = strconv.ParseInt(p, 10, 64)
	}
	for k, v := range h {
		if len(v) == 0 {
			continue
		}
		if key, val, ok := eventmsg.MetaEntry(k, v[0]); ok {
			if meta.Metadata == nil {
				meta.Metadata = map[string]string{}
			}
			meta.Metadata[key] = val
		}
	}
	return meta, nil
}
