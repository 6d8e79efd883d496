package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

// Latency is the live latency measurement: from an append's commit to the
// event's delivery from the feeder's stream.
type Latency struct {
	// Rate is the target append rate in events per second.
	Rate int
	// Achieved is the rate the writers sustained.
	Achieved float64
	// Events is the number of events appended and received.
	Events             int
	P50, P90, P99, Max time.Duration
}

// liveOptions configure liveLatency.
type liveOptions struct {
	rate     int
	duration time.Duration
	writers  int
	seed     uint64
	log      *slog.Logger
}

// deliveryTimeout is how long liveLatency waits for the last appended
// events to arrive once the writers have stopped.
const deliveryTimeout = 10 * time.Second

// liveLatency starts a feeder on the existing stream, waits until it has
// caught up with head, starts an ordered consumer on the stream for new
// messages, and then appends single events with eventstore.Append from
// several writers paced to the target rate. Each event's commit time is
// taken when Append returns and its receive time when the consumer gets it.
func liveLatency(ctx context.Context, t Target, head int64, o liveOptions) (Latency, error) {
	r, err := startFeeder(ctx, t, o.log)
	if err != nil {
		return Latency{}, err
	}
	var lat Latency
	err = r.waitFor(ctx, head, func() (bool, error) {
		return r.f.Status().State == feeder.StateCaughtUp, nil
	})
	if err == nil {
		lat, err = measureLive(ctx, t, r.f.Config().Stream, o)
	}
	if serr := r.stop(); err == nil {
		err = serr
	}
	return lat, err
}

type commit struct {
	pos int64
	at  time.Time
}

// measureLive appends paced events and measures each one's latency until
// it is delivered from stream by an ordered consumer started before the
// first append.
func measureLive(ctx context.Context, t Target, streamName string, o liveOptions) (Latency, error) {
	c, err := connect(ctx, t)
	if err != nil {
		return Latency{}, err
	}
	defer c.close()
	js, err := jetstream.New(c.nc)
	if err != nil {
		return Latency{}, err
	}
	stream, err := js.Stream(ctx, streamName)
	if err != nil {
		return Latency{}, fmt.Errorf("bench: stream: %w", err)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return Latency{}, fmt.Errorf("bench: ordered consumer: %w", err)
	}
	var (
		rmu      sync.Mutex
		received = make(map[int64]time.Time)
	)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		now := time.Now()
		pos, err := strconv.ParseInt(m.Headers().Get(contract.HeaderEventPosition), 10, 64)
		if err != nil {
			return // not an event message; the count check below reports it
		}
		rmu.Lock()
		received[pos] = now
		rmu.Unlock()
	})
	if err != nil {
		return Latency{}, fmt.Errorf("bench: consume: %w", err)
	}
	defer cc.Stop()

	pool, err := writerPool(ctx, t, o.writers)
	if err != nil {
		return Latency{}, err
	}
	defer pool.Close()

	commits, elapsed, err := appendPaced(ctx, pool, o)
	if err != nil {
		return Latency{}, err
	}

	// Wait for every appended event to arrive.
	deadline := time.Now().Add(deliveryTimeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		rmu.Lock()
		missing := 0
		for _, cm := range commits {
			if _, ok := received[cm.pos]; !ok {
				missing++
			}
		}
		rmu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			return Latency{}, fmt.Errorf("bench: %d of %d appended events not delivered within %v", missing, len(commits), deliveryTimeout)
		}
		select {
		case <-ctx.Done():
			return Latency{}, ctx.Err()
		case <-tick.C:
		}
	}
	cc.Stop()

	rmu.Lock()
	defer rmu.Unlock()
	lats := make([]time.Duration, len(commits))
	for i, cm := range commits {
		lats[i] = received[cm.pos].Sub(cm.at)
	}
	slices.Sort(lats)
	return Latency{
		Rate:     o.rate,
		Achieved: rate(len(commits), elapsed),
		Events:   len(commits),
		P50:      percentile(lats, 50),
		P90:      percentile(lats, 90),
		P99:      percentile(lats, 99),
		Max:      lats[len(lats)-1],
	}, nil
}

// writerPool opens a pool with one connection per writer, all connected
// before the clock starts.
func writerPool(ctx context.Context, t Target, writers int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(t.DatabaseURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(writers)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	conns := make([]*pgxpool.Conn, 0, writers)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range writers {
		c, err := pool.Acquire(ctx)
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("bench: writer connection: %w", err)
		}
		conns = append(conns, c)
	}
	return pool, nil
}

// appendPaced appends rate×duration single events. A pacer releases the
// events that are due every millisecond, so the rate holds even when a tick
// is late; o.writers goroutines append them, each to its own wallets with the
// expected version. It returns every commit and the time from the first
// release to the last commit.
func appendPaced(ctx context.Context, pool *pgxpool.Pool, o liveOptions) ([]commit, time.Duration, error) {
	total := int(float64(o.rate) * o.duration.Seconds())
	if total < 1 {
		return nil, 0, errors.New("bench: live: rate × duration is less than one event")
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tokens := make(chan struct{}, total)
	perWriter := make([][]commit, o.writers)
	errs := make([]error, o.writers)
	var wg sync.WaitGroup
	for w := range o.writers {
		wg.Go(func() {
			d := newDomain(o.seed + uint64(w) + 1)
			ids := make([]string, 64)
			for i := range ids {
				ids[i] = "live-" + d.walletID()
			}
			versions := make([]int64, len(ids))
			for range tokens {
				a := d.rng.IntN(len(ids))
				typ, payload := d.event(versions[a] + 1)
				res, err := eventstore.Append(wctx, pool, aggregateWallet, ids[a], versions[a],
					eventstore.NewEvent{Type: typ, Payload: json.RawMessage(payload), Metadata: d.metadataMap()})
				at := time.Now()
				if err != nil {
					errs[w] = fmt.Errorf("bench: live append: %w", err)
					cancel()
					return
				}
				versions[a] = res.Version
				perWriter[w] = append(perWriter[w], commit{pos: res.LastPosition, at: at})
			}
		})
	}

	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	sent := 0
	for sent < total && wctx.Err() == nil {
		due := min(total, int(time.Since(start).Seconds()*float64(o.rate)))
		for ; sent < due; sent++ {
			tokens <- struct{}{} // never blocks: room for all
		}
		select {
		case <-wctx.Done():
		case <-tick.C:
		}
	}
	tick.Stop()
	close(tokens)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	var all []commit
	last := start
	for _, cs := range perWriter {
		all = append(all, cs...)
		for _, c := range cs {
			if c.at.After(last) {
				last = c.at
			}
		}
	}
	return all, last.Sub(start), nil
}

// percentile returns the p-th percentile (nearest rank) of sorted values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
