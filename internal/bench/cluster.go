package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/eventstore"
	"github.com/jetproj/jetproj/pkg/examples"
)

// ClusterOptions configure the cluster benchmark (PipelineCluster). Zero
// fields take the defaults given with them.
type ClusterOptions struct {
	// Throughput configures the pipeline throughput runs, on the single
	// server and on the cluster alike (default Events 50000, Rounds 1:
	// every write is replicated three times on the same 2 cores).
	Throughput ThroughputOptions
	// Rate of the paced appends of the latency rounds and during the leader
	// kills (default 200 ev/s), Duration of a latency round (default 10 s),
	// Writers appending (default 4), latency Rounds per server (default 1).
	Rate     int
	Duration time.Duration
	Writers  int
	Rounds   int
	// Kills is the number of times the node leading EVENTS is SIGKILLed and
	// brought back (default 2).
	Kills int
	// Size is the number of cluster nodes (default 3); streams and buckets
	// get min(Size, 3) replicas.
	Size int
	// Progress receives a line per step (nil: discarded).
	Progress io.Writer
	// Logger receives the benchmark's own warnings (nil: discarded).
	Logger *slog.Logger
}

func (o ClusterOptions) withDefaults() ClusterOptions {
	if o.Throughput.Events == 0 {
		o.Throughput.Events = 50000
	}
	if o.Throughput.Rounds == 0 {
		o.Throughput.Rounds = 1
	}
	if o.Rate == 0 {
		o.Rate = 200
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	if o.Writers == 0 {
		o.Writers = 4
	}
	if o.Rounds == 0 {
		o.Rounds = 1
	}
	if o.Kills == 0 {
		o.Kills = 2
	}
	if o.Size == 0 {
		o.Size = 3
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Throughput.Progress, o.Throughput.Logger = o.Progress, o.Logger
	return o
}

// Resume is what one leader SIGKILL cost the pipeline.
type Resume struct {
	// Node is the node killed; Led the streams (KV buckets as KV_<name>)
	// it led then, EVENTS among them.
	Node string
	Led  []string
	// Events is the time from the kill until an event appended after it
	// was on EVENTS; Derived until a derived event caused by such an
	// event was on the projection's stream.
	Events, Derived time.Duration
	// Healthy is the time from the node's restart (the process started)
	// until JetStream answered through it and every stream had its
	// replicas current again.
	Healthy time.Duration
}

// ClusterResult is what the cluster benchmark measured: the same jobs on a
// single nats-server and on the cluster, in one run.
type ClusterResult struct {
	Date time.Time
	// Throughput on the single server and on the cluster.
	Single, Cluster ThroughputResult
	// Latency rounds (append → derived event) on each.
	SingleLatency, ClusterLatency PipelineResult
	// Resumes after each leader SIGKILL, on the cluster.
	Resumes []Resume
	// CaughtUp is the time from the writers' stop, after the last kill,
	// until read model = fold and the outbox was empty.
	CaughtUp time.Duration
	// Appended is the number of events appended during the kills.
	Appended int
	Options  ClusterOptions
}

// PipelineCluster runs the pipeline on the single nats-server process of
// srv and on a cluster of nats-server processes (routes over loopback,
// streams and buckets R3) that it starts and removes, with the same
// PostgreSQL server, each job in a database of its own:
//
//  1. throughput: PipelineThroughput on the single server, then on the
//     cluster (the services get FEEDER_STREAM_REPLICAS,
//     PROJECTOR_STORE_REPLICAS and EMITTER_STREAM_REPLICAS);
//  2. latency: feeder, projector (wallet_balance) and emitter as processes,
//     paced single appends, each one's time to its message on EVENTS and to
//     the first derived event covering it — on the single server, then on
//     the cluster;
//  3. on the cluster, with the same processes and appends going on: the
//     node leading EVENTS is SIGKILLed, and the benchmark measures how long
//     until an event appended after the kill is on EVENTS and until a
//     derived event it caused is on the projection's stream; the node comes
//     back and the next kill waits for every stream to be whole again.
//     Then the writers stop, and the pipeline must catch up: read model =
//     fold, outbox empty, every event once on EVENTS, derived events unique
//     and ending on each wallet's final balance. No service may exit.
func PipelineCluster(ctx context.Context, srv *Servers, opts ClusterOptions) (ClusterResult, error) {
	o := opts.withDefaults()
	res := ClusterResult{Date: time.Now(), Options: o}
	if srv.Postgres == nil || srv.NATSProc == nil {
		return res, errors.New("bench: the cluster benchmark needs PostgreSQL and a nats-server process (StartServersWith without EmbeddedNATS)")
	}
	if err := o.Throughput.withDefaults().validate(); err != nil {
		return res, err
	}
	out := o.Progress
	single := srv.Target()
	fmt.Fprintf(out, "starting %d clustered nats-server processes (routes over loopback, default settings)\n", o.Size)
	cl, err := StartNATSCluster(ctx, o.Size)
	if err != nil {
		return res, err
	}
	defer cl.Close()
	cluster := single
	cluster.NATSURL, cluster.NATSCluster, cluster.NATSPIDs, cluster.NATSReplicas = cl.URL(), true, cl.PIDs(), min(o.Size, 3)
	cluster.NATSPID = 0
	db := func(name string) (string, error) { return srv.Postgres.CreateDatabase(ctx, name) }

	fmt.Fprintln(out, "\n== throughput, single nats-server ==")
	if res.Single, err = PipelineThroughput(ctx, single, srv.NATSProc.PID(), o.Throughput); err != nil {
		return res, fmt.Errorf("single server: %w", err)
	}
	fmt.Fprintln(out, "\n== throughput, cluster ==")
	ct := cluster
	if ct.DatabaseURL, err = db("bench_cluster"); err != nil {
		return res, err
	}
	if res.Cluster, err = PipelineThroughput(ctx, ct, 0, o.Throughput); err != nil {
		return res, fmt.Errorf("cluster: %w", err)
	}

	bins, err := buildServices(ctx)
	if err != nil {
		return res, err
	}
	defer bins.remove()
	fmt.Fprintln(out, "\n== append → derived event, single nats-server ==")
	st := single
	if st.DatabaseURL, err = db("latency_single"); err != nil {
		return res, err
	}
	if err := latencyRun(ctx, st, bins, o, &res.SingleLatency, nil); err != nil {
		return res, fmt.Errorf("single server latency: %w", err)
	}
	fmt.Fprintln(out, "\n== append → derived event, cluster; then leader SIGKILLs ==")
	if ct.DatabaseURL, err = db("latency_cluster"); err != nil {
		return res, err
	}
	if err := latencyRun(ctx, ct, bins, o, &res.ClusterLatency, func(r *latencyRunner) error {
		return r.kills(ctx, cl, &res)
	}); err != nil {
		return res, fmt.Errorf("cluster latency: %w", err)
	}
	return res, nil
}

// latencyRunner is a running pipeline of processes for the latency rounds
// and the leader kills.
type latencyRunner struct {
	b     *throughputBench
	nc    *nats.Conn
	procs []*service
	// failed receives a process's early exit.
	failed chan error
	o      ClusterOptions
	// metricsURL is the projector's /metrics.
	metricsURL string
}

// latencyRun starts feeder, projector (wallet_balance) and emitter as
// processes against t (database and streams empty), measures o.Rounds
// latency rounds into res, then runs after (when not nil) with the
// processes still running.
func latencyRun(ctx context.Context, t Target, bins *serviceBinaries, o ClusterOptions, res *PipelineResult, after func(*latencyRunner) error) error {
	b := &throughputBench{o: ThroughputOptions{Events: 1}, t: t, bins: bins, http: &http.Client{Timeout: 5 * time.Second}}
	var err error
	if b.pool, err = pgxpool.New(ctx, t.DatabaseURL); err != nil {
		return fmt.Errorf("bench: postgres pool: %w", err)
	}
	defer b.pool.Close()
	// Reconnects for as long as the benchmark runs: nodes die under it.
	nc, err := nats.Connect(t.NATSURL, nats.Name("jetproj-bench-latency"), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		return fmt.Errorf("bench: nats: %w", err)
	}
	defer nc.Close()
	if b.js, err = jetstream.New(nc); err != nil {
		return err
	}
	if _, err := eventstore.Migrate(ctx, b.pool); err != nil {
		return err
	}
	if err := b.reset(ctx); err != nil {
		return err
	}
	runtime.GC()
	r := &latencyRunner{b: b, nc: nc, failed: make(chan error, 8), o: o}
	p, e, metricsURL, err := b.startProjection(ctx, examples.WalletBalanceName)
	r.metricsURL = metricsURL
	for _, s := range []*service{p, e} {
		if s != nil {
			r.procs = append(r.procs, s)
		}
	}
	defer func() {
		for _, s := range r.procs {
			s.stop()
		}
	}()
	if err != nil {
		return err
	}
	f, err := startService("feeder", bins.feeder, b.env("off"), "run")
	if err != nil {
		return err
	}
	r.procs = append(r.procs, f)
	for _, s := range r.procs {
		go func() {
			select {
			case <-s.done:
				r.failed <- s.exited()
			case <-ctx.Done():
			}
		}()
	}
	fail := func(err error) error { return fmt.Errorf("%w\n%s", err, failureLogs(r.procs)) }

	po := PipelineOptions{Rate: 50, Duration: time.Second, Writers: o.Writers, Seed: 0x5a5a, Logger: o.Logger}
	if _, err := measurePipeline(ctx, b.js, nc, t, po, r.failed); err != nil {
		return fail(fmt.Errorf("bench: warm-up: %w", err))
	}
	for i := range o.Rounds {
		po := PipelineOptions{Rate: o.Rate, Duration: o.Duration, Writers: o.Writers, Seed: uint64(i+1) * 1000, Logger: o.Logger}
		rd, err := measurePipeline(ctx, b.js, nc, t, po, r.failed)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(o.Progress, "latency round %d: %d events at %.0f/s: EVENTS p50 %s p99 %s · derived p50 %s p99 %s max %s\n",
			i+1, rd.Derived.Events, rd.Derived.Achieved, ms(rd.Events.P50), ms(rd.Events.P99), ms(rd.Derived.P50), ms(rd.Derived.P99), ms(rd.Derived.Max))
		res.Rounds = append(res.Rounds, rd)
	}
	if after != nil {
		if err := after(r); err != nil {
			return fail(err)
		}
	}
	return nil
}

// state describes where the pipeline stands, for an error.
func (r *latencyRunner) state(ctx context.Context, events, derived jetstream.Stream) string {
	var parts []string
	if head, err := eventstore.Head(ctx, r.b.pool); err == nil {
		parts = append(parts, fmt.Sprintf("store head %d", head))
	}
	ev, err := lastPosition(ctx, events, contract.HeaderEventPosition)
	parts = append(parts, fmt.Sprintf("EVENTS last position %d (%v)", ev, err))
	der, err := lastPosition(ctx, derived, contract.HeaderSourcePosition)
	parts = append(parts, fmt.Sprintf("derived last source position %d (%v)", der, err))
	var outbox, rows int64
	_ = r.b.pool.QueryRow(ctx, `SELECT count(*) FROM jetproj.outbox`).Scan(&outbox)
	_ = r.b.pool.QueryRow(ctx, `SELECT count(*) FROM wallet_balance`).Scan(&rows)
	parts = append(parts, fmt.Sprintf("outbox %d rows, wallet_balance %d rows", outbox, rows))
	if r.metricsURL != "" {
		m, err := scrapeMetrics(ctx, r.b.http, r.metricsURL, "jetproj_projector_slots_owned", "jetproj_projector_messages_total", "jetproj_projector_batch_messages_count")
		parts = append(parts, fmt.Sprintf("projector metrics %v (%v)", m, err))
	}
	if l, err := streamLeaders(ctx, r.b.js); err == nil {
		parts = append(parts, fmt.Sprintf("leaders %v", l))
	}
	return strings.Join(parts, "; ")
}

// exited is the first process exit, if any.
func (r *latencyRunner) exited() error {
	for _, s := range r.procs {
		if err := s.exited(); err != nil {
			return err
		}
	}
	return nil
}

// kills appends at o.Rate all along; o.Kills times it waits for a whole
// cluster, SIGKILLs the node leading EVENTS, measures the resume and
// brings the node back. Then it stops the writers, waits until the
// pipeline has caught up and checks the results in full.
func (r *latencyRunner) kills(ctx context.Context, cl *NATSCluster, res *ClusterResult) error {
	o := r.o
	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	pool, err := writerPool(ctx, r.b.t, o.Writers)
	if err != nil {
		return err
	}
	defer pool.Close()
	var (
		wg       sync.WaitGroup
		appended int
		werr     error
	)
	wg.Go(func() {
		// Second by second, each with its own wallets (a new seed), until
		// stopped.
		for i := 0; wctx.Err() == nil; i++ {
			commits, _, err := appendPaced(wctx, pool, liveOptions{rate: o.Rate, duration: time.Second, writers: o.Writers,
				seed: 1_000_000 + uint64(i)*1000, log: o.Logger})
			if err != nil {
				if wctx.Err() == nil {
					werr = err
				}
				return
			}
			appended += len(commits)
		}
	})
	halt := func() error {
		stopWriters()
		wg.Wait()
		return werr
	}

	own := contract.ProjectionStream(examples.WalletBalanceName)
	js := r.b.js
	for k := range o.Kills {
		if err := r.waitHealthy(ctx, 60*time.Second); err != nil {
			_ = halt() // this error, not the writers', is the one to report
			return err
		}
		// Derived events flow before the kill.
		if err := poll(ctx, 5*time.Millisecond, func() (bool, error) {
			if err := r.exited(); err != nil {
				return false, err
			}
			head, err := eventstore.Head(ctx, r.b.pool)
			if err != nil {
				return false, err
			}
			s, err := js.Stream(ctx, own)
			if err != nil {
				return false, nil // the emitter creates it
			}
			pos, _ := lastPosition(ctx, s, contract.HeaderSourcePosition)
			return head > 0 && pos > 0 && head-pos < int64(o.Rate), nil
		}); err != nil {
			_ = halt() // this error, not the writers', is the one to report
			return err
		}
		rs, err := r.killLeader(ctx, cl, own)
		if err != nil {
			_ = halt() // this error, not the writers', is the one to report
			return fmt.Errorf("kill %d: %w", k+1, err)
		}
		res.Resumes = append(res.Resumes, rs)
		fmt.Fprintf(o.Progress, "SIGKILL %d of %s leading %s: events reach EVENTS again after %s, derived events reach %s after %s; whole again %s after its restart\n",
			k+1, rs.Node, strings.Join(rs.Led, ", "), ms(rs.Events), own, ms(rs.Derived), ms(rs.Healthy))
	}
	if err := halt(); err != nil {
		return err
	}
	res.Appended = appended
	stopped := time.Now()
	r.b.fold = nil // folded afresh
	if err := r.b.refold(ctx); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := poll(cctx, 50*time.Millisecond, func() (bool, error) {
		if err := r.exited(); err != nil {
			return false, err
		}
		// An append whose context the stop cancelled may still commit
		// after the fold was read (its COMMIT was on its way): the fold
		// follows the store.
		if err := r.b.refold(cctx); err != nil {
			return false, err
		}
		return r.b.caughtUp(cctx, examples.WalletBalanceName, "")
	}); err != nil {
		return fmt.Errorf("bench: not caught up %v after the writers stopped: %w%s", time.Since(stopped).Round(time.Millisecond), err, r.b.readModelDiff(ctx))
	}
	res.CaughtUp = time.Since(stopped)
	if err := r.exited(); err != nil {
		return err
	}
	derived, err := r.b.check(ctx, examples.WalletBalanceName)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Progress, "caught up %s after the writers stopped; %d events appended during the kills, %d in all; %d derived events; checks passed; no service exited\n",
		ms(res.CaughtUp), appended, r.b.o.Events, derived)
	return nil
}

// killLeader SIGKILLs the node leading EVENTS and measures the resume,
// then restarts the node and waits until the cluster is whole.
func (r *latencyRunner) killLeader(ctx context.Context, cl *NATSCluster, own string) (Resume, error) {
	var rs Resume
	js := r.b.js
	leaders, err := streamLeaders(ctx, js)
	if err != nil {
		return rs, err
	}
	rs.Node = leaders[contract.EventsStream]
	node := cl.Node(rs.Node)
	if node == nil {
		return rs, fmt.Errorf("bench: EVENTS led by %q, not a node of the cluster", rs.Node)
	}
	for _, name := range slices.Sorted(maps.Keys(leaders)) {
		if leaders[name] == rs.Node {
			rs.Led = append(rs.Led, name)
		}
	}
	// Every event committed so far is at most head: a position above it
	// on EVENTS (resp. as a derived event's source) was appended after
	// the kill.
	head, err := eventstore.Head(ctx, r.b.pool)
	if err != nil {
		return rs, err
	}
	events, err := js.Stream(ctx, contract.EventsStream)
	if err != nil {
		return rs, err
	}
	derived, err := js.Stream(ctx, own)
	if err != nil {
		return rs, err
	}
	fmt.Fprintf(r.o.Progress, "SIGKILL of %s leading %s (store head %d)\n", rs.Node, strings.Join(rs.Led, ", "), head)
	node.Kill()
	killed := time.Now()
	var evAt, derAt time.Time
	pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// Every 10 ms: each poll is two requests per stream, to a cluster
	// electing leaders on 2 shared cores.
	err = poll(pctx, 10*time.Millisecond, func() (bool, error) {
		if err := r.exited(); err != nil {
			return false, err
		}
		if evAt.IsZero() {
			if pos, _ := lastPosition(pctx, events, contract.HeaderEventPosition); pos > head {
				evAt = time.Now()
			}
		}
		if derAt.IsZero() {
			if pos, _ := lastPosition(pctx, derived, contract.HeaderSourcePosition); pos > head {
				derAt = time.Now()
			}
		}
		return !evAt.IsZero() && !derAt.IsZero(), nil
	})
	if err != nil {
		return rs, fmt.Errorf("bench: pipeline did not resume within %v of the SIGKILL of %s (EVENTS moved: %t, %s moved: %t; %s): %w",
			time.Since(killed).Round(time.Millisecond), rs.Node, !evAt.IsZero(), own, !derAt.IsZero(), r.state(ctx, events, derived), err)
	}
	rs.Events, rs.Derived = evAt.Sub(killed), derAt.Sub(killed)
	restarted := time.Now()
	if err := node.Restart(ctx); err != nil {
		return rs, err
	}
	if err := r.waitHealthy(ctx, 2*time.Minute); err != nil {
		return rs, err
	}
	rs.Healthy = time.Since(restarted)
	return rs, nil
}

// lastPosition is the position header of a stream's last message (0 when
// the stream is empty or does not answer within a second).
func lastPosition(ctx context.Context, s jetstream.Stream, header string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	info, err := s.Info(ctx)
	if err != nil || info.State.LastSeq == 0 {
		return 0, err
	}
	m, err := s.GetMsg(ctx, info.State.LastSeq)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(m.Header.Get(header), 10, 64)
}

// streamLeaders names the node leading each stream of the account.
func streamLeaders(ctx context.Context, js jetstream.JetStream) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out := map[string]string{}
	infos := js.ListStreams(ctx)
	for info := range infos.Info() {
		if info.Cluster != nil {
			out[info.Config.Name] = info.Cluster.Leader
		}
	}
	if err := infos.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return nil, err
	}
	if out[contract.EventsStream] == "" {
		return nil, errors.New("bench: EVENTS has no leader")
	}
	return out, nil
}

// waitHealthy waits until every stream of the account has its replicas,
// a leader and every follower current, and no process has exited.
func (r *latencyRunner) waitHealthy(ctx context.Context, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	want := max(r.b.t.NATSReplicas, 1)
	var last error
	err := poll(ctx, 20*time.Millisecond, func() (bool, error) {
		if err := r.exited(); err != nil {
			return false, err
		}
		last = streamsWhole(ctx, r.b.js, want)
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("bench: cluster not whole within %v: %w (last: %v)", within, err, last)
	}
	return nil
}

// streamsWhole is nil when every stream has the replicas wanted, a leader
// and every follower current.
func streamsWhole(ctx context.Context, js jetstream.JetStream, replicas int) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	infos := js.ListStreams(ctx)
	n := 0
	var errs []error
	for info := range infos.Info() {
		n++
		name := info.Config.Name
		switch {
		case info.Config.Replicas != replicas:
			errs = append(errs, fmt.Errorf("%s has %d replicas, want %d", name, info.Config.Replicas, replicas))
		case replicas == 1:
		case info.Cluster == nil || info.Cluster.Leader == "":
			errs = append(errs, fmt.Errorf("%s has no leader", name))
		case len(info.Cluster.Replicas) != replicas-1:
			errs = append(errs, fmt.Errorf("%s has %d followers", name, len(info.Cluster.Replicas)))
		default:
			for _, p := range info.Cluster.Replicas {
				if !p.Current || p.Offline {
					errs = append(errs, fmt.Errorf("%s: follower %s not current", name, p.Name))
				}
			}
		}
	}
	if err := infos.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return err
	}
	if n == 0 {
		return errors.New("no streams")
	}
	return errors.Join(errs...)
}

// Summary is the report: single server and cluster side by side.
func (r ClusterResult) Summary() string {
	var b strings.Builder
	o := r.Options
	fmt.Fprintf(&b, "pipeline on one nats-server and on a %d-node cluster (R%d), same run, %s\n", o.Size, min(o.Size, 3), r.Date.Format(time.DateOnly))
	fmt.Fprintf(&b, "throughput (%d events over %d wallets, best of %d):\n", r.Single.Events, r.Single.Wallets, len(r.Single.Feeder))
	fmt.Fprintf(&b, "  %-30s %12s %12s %8s\n", "", "single", "cluster", "cluster/single")
	line := func(what string, s, c float64) {
		fmt.Fprintf(&b, "  %-30s %8.0f ev/s %8.0f ev/s %8.2f\n", what, s, c, ratio(c, s))
	}
	line("feeder alone", r.Single.BestFeeder().Rate(), r.Cluster.BestFeeder().Rate())
	for _, name := range r.Single.Projections {
		line(name+" pipeline", r.Single.BestPipeline(name).Rate(), r.Cluster.BestPipeline(name).Rate())
	}
	if len(r.SingleLatency.Rounds) > 0 && len(r.ClusterLatency.Rounds) > 0 {
		s, c := r.SingleLatency.Best(), r.ClusterLatency.Best()
		fmt.Fprintf(&b, "append → derived event at %d ev/s (%d events a round, best of %d rounds by derived p99):\n", o.Rate, s.Derived.Events, len(r.SingleLatency.Rounds))
		fmt.Fprintf(&b, "  single   EVENTS p50 %s p99 %s · derived p50 %s p99 %s max %s\n", ms(s.Events.P50), ms(s.Events.P99), ms(s.Derived.P50), ms(s.Derived.P99), ms(s.Derived.Max))
		fmt.Fprintf(&b, "  cluster  EVENTS p50 %s p99 %s · derived p50 %s p99 %s max %s\n", ms(c.Events.P50), ms(c.Events.P99), ms(c.Derived.P50), ms(c.Derived.P99), ms(c.Derived.Max))
	}
	if len(r.Resumes) > 0 {
		fmt.Fprintf(&b, "resume after SIGKILL of the node leading EVENTS (appends at %d ev/s all along):\n", o.Rate)
		for i, rs := range r.Resumes {
			fmt.Fprintf(&b, "  kill %d: %s (leading %s): events on EVENTS again after %s, derived events after %s\n",
				i+1, rs.Node, strings.Join(rs.Led, ", "), ms(rs.Events), ms(rs.Derived))
		}
		fmt.Fprintf(&b, "  then caught up %s after the writers stopped (%d events during the kills); read model = fold, every event once on EVENTS, derived events unique and final; no service exited\n",
			ms(r.CaughtUp), r.Appended)
	}
	fmt.Fprintf(&b, "  single: %s\n  cluster: %s; GOMAXPROCS %d\n", r.Single.Target.Describe(), r.Cluster.Target.Describe(), runtime.GOMAXPROCS(0))
	return b.String()
}

// Markdown is the result as tables for docs/benchmarks.md.
func (r ClusterResult) Markdown(command string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "`%s` (%s)\n\n", command, r.Date.Format(time.DateOnly))
	fmt.Fprintf(&b, "| throughput, %d events | single nats-server | %d-node cluster, R%d | cluster / single |\n|---|---:|---:|---:|\n",
		r.Single.Events, r.Options.Size, min(r.Options.Size, 3))
	fmt.Fprintf(&b, "| feeder alone | %.0f ev/s | %.0f ev/s | %.2f |\n", r.Single.BestFeeder().Rate(), r.Cluster.BestFeeder().Rate(),
		ratio(r.Cluster.BestFeeder().Rate(), r.Single.BestFeeder().Rate()))
	for _, name := range r.Single.Projections {
		s, c := r.Single.BestPipeline(name).Rate(), r.Cluster.BestPipeline(name).Rate()
		fmt.Fprintf(&b, "| %s pipeline | %.0f ev/s | %.0f ev/s | %.2f |\n", name, s, c, ratio(c, s))
	}
	fmt.Fprintln(&b)
	fmt.Fprintf(&b, "| append → derived, %d ev/s | round | events | EVENTS p50 / p99 | derived p50 / p99 / max |\n|---|---|---:|---|---|\n", r.Options.Rate)
	for _, x := range []struct {
		name string
		p    PipelineResult
	}{{"single", r.SingleLatency}, {"cluster", r.ClusterLatency}} {
		for i, rd := range x.p.Rounds {
			fmt.Fprintf(&b, "| %s | %d | %d | %s / %s | %s / %s / %s |\n", x.name, i+1, rd.Derived.Events,
				ms(rd.Events.P50), ms(rd.Events.P99), ms(rd.Derived.P50), ms(rd.Derived.P99), ms(rd.Derived.Max))
		}
	}
	if len(r.Resumes) > 0 {
		fmt.Fprintln(&b)
		fmt.Fprintf(&b, "| SIGKILL | node | leading | new events on EVENTS after | derived events after | whole again after restart |\n|---|---|---|---:|---:|---:|\n")
		for i, rs := range r.Resumes {
			fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s |\n", i+1, rs.Node, strings.Join(rs.Led, ", "), ms(rs.Events), ms(rs.Derived), ms(rs.Healthy))
		}
		fmt.Fprintf(&b, "\nCaught up %s after the writers stopped; %d events appended during the kills.\n", ms(r.CaughtUp), r.Appended)
	}
	return b.String()
}
