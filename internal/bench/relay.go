package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventmsg"
	"github.com/jetproj/jetproj/pkg/eventstore"
)

// Settings of the raw relay, the same as the feeder's defaults.
const (
	rawStream   = "RAW"
	rawPrefix   = "raw"
	rawPage     = 1000
	rawInFlight = 4000
)

// clients are one run's own PostgreSQL pool and NATS connection, so that no
// run inherits another's buffers or prepared statements.
type clients struct {
	pool *pgxpool.Pool
	nc   *nats.Conn
}

func connect(ctx context.Context, t Target) (*clients, error) {
	pool, err := pgxpool.New(ctx, t.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("bench: postgres pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("bench: postgres: %w", err)
	}
	nc, err := nats.Connect(t.NATSURL, nats.Name("jetproj-bench"))
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("bench: nats: %w", err)
	}
	return &clients{pool: pool, nc: nc}, nil
}

func (c *clients) close() {
	c.nc.Close()
	c.pool.Close()
}

// deleteStream deletes a stream if it exists.
func deleteStream(ctx context.Context, js jetstream.JetStream, name string) error {
	if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("bench: delete stream %s: %w", name, err)
	}
	return nil
}

// deleteBucket deletes a KV bucket if it exists.
func deleteBucket(ctx context.Context, js jetstream.JetStream, name string) error {
	if err := js.DeleteKeyValue(ctx, name); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("bench: delete bucket %s: %w", name, err)
	}
	return nil
}

// streamMsgs returns the number of messages in a stream.
func streamMsgs(ctx context.Context, js jetstream.JetStream, name string) (uint64, error) {
	s, err := js.Stream(ctx, name)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// Run is one measured run.
type Run struct {
	Events  int
	Elapsed time.Duration
	// CPU time used during the run by this process (the client side) and,
	// when NATS runs as a process of its own, by the nats-server process;
	// zero when not measured.
	ClientCPU, ServerCPU time.Duration
	// PostgresCPU is the CPU time PostgreSQL's processes used during the
	// run, when the benchmark started PostgreSQL; zero otherwise.
	PostgresCPU time.Duration
}

// Rate is the run's events per second.
func (r Run) Rate() float64 { return rate(r.Events, r.Elapsed) }

// rawRelay is the raw limit the feeder is compared with: a keyset read by
// position in pages of 1000 (the columns the feeder reads) and an async
// publish of each event's contract message (same subject shape, headers and
// Nats-Msg-Id) to stream RAW with up to 4000 acknowledgements pending. It
// has none of the feeder's work: no transaction horizon, no sequence
// fencing, no checkpoint, no lease, no per-message acknowledgement
// bookkeeping. The clock runs from the first read until the last
// acknowledgement.
func rawRelay(ctx context.Context, t Target, want int) (Run, error) {
	c, err := connect(ctx, t)
	if err != nil {
		return Run{}, err
	}
	defer c.close()
	var (
		mu       sync.Mutex
		pubErr   error
		failures int
	)
	js, err := jetstream.New(c.nc,
		jetstream.WithPublishAsyncMaxPending(rawInFlight),
		jetstream.WithPublishAsyncTimeout(30*time.Second),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			mu.Lock()
			defer mu.Unlock()
			failures++
			if pubErr == nil {
				pubErr = fmt.Errorf("bench: raw publish %s: %w", m.Header.Get(contract.HeaderMsgID), err)
			}
		}))
	if err != nil {
		return Run{}, err
	}
	if err := deleteStream(ctx, js, rawStream); err != nil {
		return Run{}, err
	}
	// The same stream settings as the feeder's stream.
	cfg := feeder.Config{Name: "raw", Stream: rawStream, SubjectPrefix: rawPrefix}.Defaults().StreamConfig()
	cfg.Description = "jetproj benchmark: raw relay"
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		return Run{}, fmt.Errorf("bench: create stream %s: %w", rawStream, err)
	}

	start := time.Now()
	var after int64
	n := 0
	for {
		evs, err := eventstore.ReadFrom(ctx, c.pool, after, rawPage)
		if err != nil {
			return Run{}, err
		}
		if len(evs) == 0 {
			break
		}
		for _, e := range evs {
			msg, err := eventmsg.New(rawPrefix, e)
			if err != nil {
				return Run{}, fmt.Errorf("bench: event %d: %w", e.Position, err)
			}
			if _, err := js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute)); err != nil {
				return Run{}, fmt.Errorf("bench: raw publish event %d: %w", e.Position, err)
			}
		}
		after = evs[len(evs)-1].Position
		n += len(evs)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return Run{}, ctx.Err()
	}
	run := Run{Events: n, Elapsed: time.Since(start)}

	mu.Lock()
	err = pubErr
	mu.Unlock()
	if err != nil {
		return run, fmt.Errorf("%w (%d failed)", err, failures)
	}
	if n != want {
		return run, fmt.Errorf("bench: raw relay read %d events, want %d", n, want)
	}
	if got, err := streamMsgs(ctx, js, rawStream); err != nil || got != uint64(want) {
		return run, fmt.Errorf("bench: stream %s holds %d messages, want %d (%v)", rawStream, got, want, err)
	}
	return run, nil
}

// runningFeeder is a feeder started by startFeeder, with its own clients.
type runningFeeder struct {
	f       *feeder.Feeder
	started time.Time
	c       *clients
	cancel  context.CancelFunc
	done    chan error
}

// startFeeder starts a feeder with the default configuration.
func startFeeder(ctx context.Context, t Target, log *slog.Logger) (*runningFeeder, error) {
	c, err := connect(ctx, t)
	if err != nil {
		return nil, err
	}
	f, err := feeder.New(feeder.Config{}, feeder.Deps{Pool: c.pool, NC: c.nc, Logger: log})
	if err != nil {
		c.close()
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	r := &runningFeeder{f: f, c: c, cancel: cancel, done: make(chan error, 1)}
	r.started = time.Now()
	go func() { r.done <- f.Run(rctx) }()
	return r, nil
}

// waitFor polls the feeder until it has acknowledged position and ok
// reports true; it fails if the feeder stops or fails first.
func (r *runningFeeder) waitFor(ctx context.Context, position int64, ok func() (bool, error)) error {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-r.done:
			r.done <- err
			return fmt.Errorf("bench: feeder stopped early: %v", err)
		case <-tick.C:
		}
		st := r.f.Status()
		if st.State == feeder.StateFailed {
			return fmt.Errorf("bench: feeder failed: %s", st.Error)
		}
		if st.Position < position {
			continue
		}
		done, err := ok()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// stop stops the feeder and closes its clients.
func (r *runningFeeder) stop() error {
	r.cancel()
	err := <-r.done
	r.done <- err
	r.c.close()
	if err != nil {
		return fmt.Errorf("bench: feeder: %w", err)
	}
	return nil
}

// resetFeeder deletes the feeder's stream and KV buckets, so that the next
// feeder starts from the beginning of the store.
func resetFeeder(ctx context.Context, js jetstream.JetStream) error {
	cfg := feeder.Config{}.Defaults()
	if err := deleteStream(ctx, js, cfg.Stream); err != nil {
		return err
	}
	if err := deleteBucket(ctx, js, cfg.StateBucket); err != nil {
		return err
	}
	return deleteBucket(ctx, js, cfg.LeaseBucket)
}

// feederBackfill runs a feeder with the default configuration (stream
// EVENTS) on the loaded store, from an empty stream and empty KV state. The
// clock runs from Run until the feeder reports the store's last position as
// acknowledged and the stream holds every event.
func feederBackfill(ctx context.Context, t Target, js jetstream.JetStream, head int64, want int, log *slog.Logger) (Run, error) {
	if err := resetFeeder(ctx, js); err != nil {
		return Run{}, err
	}
	r, err := startFeeder(ctx, t, log)
	if err != nil {
		return Run{}, err
	}
	stream := r.f.Config().Stream
	var got uint64
	err = r.waitFor(ctx, head, func() (bool, error) {
		var err error
		got, err = streamMsgs(ctx, js, stream)
		if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return false, err
		}
		return got >= uint64(want), nil
	})
	run := Run{Events: int(got), Elapsed: time.Since(r.started)}
	if serr := r.stop(); err == nil {
		err = serr
	}
	if err == nil && got != uint64(want) {
		err = fmt.Errorf("bench: stream %s holds %d messages, want %d", stream, got, want)
	}
	return run, err
}
