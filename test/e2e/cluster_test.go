package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/examplecheck"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/examples"
)

// natsCluster is three nats-server processes clustered over loopback
// routes, each with its own store directory.
type natsCluster struct {
	t     *testing.T
	nodes []*natsServer
}

// startNATSCluster starts three clustered nats-server processes and waits
// until JetStream answers through each.
func startNATSCluster(t *testing.T) *natsCluster {
	t.Helper()
	const n = 3
	c := &natsCluster{t: t}
	routePorts := make([]int, n)
	var routes []string
	for i := range n {
		p, err := devenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		routePorts[i] = p
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	for i := range n {
		port, err := devenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		s := &natsServer{t: t, name: fmt.Sprintf("n%d", i+1), port: port, dir: t.TempDir()}
		s.conf = filepath.Join(s.dir, "nats.conf")
		conf := fmt.Sprintf(`server_name: %s
host: 127.0.0.1
port: %d
jetstream {
  store_dir: %q
}
cluster {
  name: jetproj
  listen: 127.0.0.1:%d
  routes: [%s]
}
`, s.name, port, filepath.Join(s.dir, "store"), routePorts[i], strings.Join(routes, ", "))
		if err := os.WriteFile(s.conf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, s)
	}
	for _, s := range c.nodes {
		s.launch()
	}
	for _, s := range c.nodes {
		s.waitReady()
	}
	return c
}

// URL names every node (NATS_URL).
func (c *natsCluster) URL() string {
	var urls []string
	for _, s := range c.nodes {
		urls = append(urls, s.URL())
	}
	return strings.Join(urls, ",")
}

// node returns the node whose server_name is name.
func (c *natsCluster) node(name string) *natsServer {
	for _, s := range c.nodes {
		if s.name == name {
			return s
		}
	}
	c.t.Fatalf("no node %q", name)
	return nil
}

// connect returns a JetStream context for the test's checks through any
// node; it reconnects forever and is closed when the test ends.
func (c *natsCluster) connect() jetstream.JetStream {
	c.t.Helper()
	_, js := devtest.Connect(c.t, c)
	return js
}

// streamInfo asks for a stream's info with a short deadline.
func streamInfo(js jetstream.JetStream, name string) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	return s.Info(ctx)
}

// leader is the node leading stream name (a KV bucket B is KV_B).
func leader(js jetstream.JetStream, name string) (string, error) {
	info, err := streamInfo(js, name)
	if err != nil {
		return "", err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return "", fmt.Errorf("stream %s has no leader", name)
	}
	return info.Cluster.Leader, nil
}

// healthy is nil when every stream of the account has three replicas, a
// leader and both followers current: the next disruption then starts from
// a whole cluster.
func healthy(js jetstream.JetStream) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	names := js.StreamNames(ctx)
	var all []string
	for n := range names.Name() {
		all = append(all, n)
	}
	if err := names.Err(); err != nil {
		return err
	}
	for _, name := range all {
		info, err := streamInfo(js, name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		switch {
		case info.Config.Replicas != 3:
			return fmt.Errorf("%s has %d replicas, want 3", name, info.Config.Replicas)
		case info.Cluster == nil || info.Cluster.Leader == "":
			return fmt.Errorf("%s has no leader", name)
		case len(info.Cluster.Replicas) != 2:
			return fmt.Errorf("%s has %d followers", name, len(info.Cluster.Replicas))
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current || r.Offline {
				return fmt.Errorf("%s: follower %s not current", name, r.Name)
			}
		}
	}
	return nil
}

// lastSeqOf is a stream's last sequence, 0 when unknown.
func lastSeqOf(js jetstream.JetStream, name string) uint64 {
	info, err := streamInfo(js, name)
	if err != nil {
		return 0
	}
	return info.State.LastSeq
}

// TestClusterNodeRestartsAndLeaderKills (issue 13): on a three-node
// JetStream cluster with R3 streams and buckets, two feeders, two projector
// replicas (wallet_balance) and one emitter run as processes while events
// are appended. Every node is restarted once (rolling, SIGTERM), then the
// nodes leading EVENTS, the projection's own stream and its lease bucket
// are SIGKILLed one at a time and brought back. No service exits; every
// event is on EVENTS once; the read model equals the fold; the derived
// events are unique and end on each wallet's final balance; the pipeline is
// caught up within a bound after the last node is back. The time the
// pipeline needed to move again after each SIGKILL is printed.
func TestClusterNodeRestartsAndLeaderKills(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	cl := startNATSCluster(t)
	js := cl.connect()
	url := cl.URL()
	ownStream := contract.ProjectionStream(examples.WalletBalanceName)
	leaseBucket := contract.KVStream(contract.LeaseBucket(examples.WalletBalanceName))

	// Each service checks only its own prefixes: the others' are ignored.
	r3 := func(env map[string]string) map[string]string {
		env["FEEDER_STREAM_REPLICAS"] = "3"
		env["PROJECTOR_STORE_REPLICAS"] = "3"
		env["EMITTER_STREAM_REPLICAS"] = "3"
		return env
	}
	procs := []*proc{
		startFeeder(t, "feeder f1", r3(feederEnv(dbURL, url, "f1"))),
		startFeeder(t, "feeder f2", r3(feederEnv(dbURL, url, "f2"))),
		startProjector(t, "projector p1", r3(pipelineEnv(dbURL, url, "p1", examples.WalletBalanceName))),
		startProjector(t, "projector p2", r3(pipelineEnv(dbURL, url, "p2", examples.WalletBalanceName))),
		startEmitter(t, "emitter e1", r3(emitterEnv(dbURL, url, "e1"))),
	}
	noExits := func() {
		t.Helper()
		for _, p := range procs {
			if p.exited() {
				t.Fatalf("%s exited: %s", p.name, p.state)
			}
		}
	}

	w := startWriters(t, pool, 2, 20*time.Millisecond, testSeed(t))
	// The pipeline runs end to end before anything is disturbed.
	devtest.Eventually(t, 60*time.Second, func() error {
		noExits()
		if n := lastSeqOf(js, ownStream); n < 50 {
			return fmt.Errorf("%d derived events so far", n)
		}
		return healthy(js)
	})

	// moved waits until events reach EVENTS and derived events reach the
	// projection's stream again after a disruption, and returns how long
	// each took.
	moved := func(what string, since time.Time) {
		t.Helper()
		ev, der := lastSeqOf(js, contract.EventsStream), lastSeqOf(js, ownStream)
		var evAt, derAt time.Time
		devtest.Eventually(t, 60*time.Second, func() error {
			noExits()
			now := time.Now()
			if evAt.IsZero() && lastSeqOf(js, contract.EventsStream) > ev {
				evAt = now
			}
			if derAt.IsZero() && lastSeqOf(js, ownStream) > der {
				derAt = now
			}
			if evAt.IsZero() || derAt.IsZero() {
				return fmt.Errorf("%s: EVENTS moved: %v, %s moved: %v", what, !evAt.IsZero(), ownStream, !derAt.IsZero())
			}
			return nil
		})
		t.Logf("%s: events reach EVENTS again after %v, derived events reach %s after %v",
			what, evAt.Sub(since).Round(10*time.Millisecond), ownStream, derAt.Sub(since).Round(10*time.Millisecond))
	}

	// Rolling restart: each node in turn stops gracefully and comes back.
	for _, s := range cl.nodes {
		if err := s.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-s.p.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("node %s did not stop within 30s of SIGTERM", s.name)
		}
		stopped := time.Now()
		s.start()
		moved("rolling restart of "+s.name, stopped)
		devtest.Eventually(t, 60*time.Second, func() error { noExits(); return healthy(js) })
	}

	// SIGKILL the leader of each in turn, then bring the node back.
	for _, stream := range []string{contract.EventsStream, ownStream, leaseBucket} {
		var name string
		devtest.Eventually(t, 30*time.Second, func() (err error) { name, err = leader(js, stream); return err })
		led := []string{}
		for _, other := range []string{contract.EventsStream, ownStream, leaseBucket, contract.KVStream(contract.FeederLeaseBucket), contract.KVStream(contract.EmitterLeaseBucket)} {
			if l, err := leader(js, other); err == nil && l == name {
				led = append(led, other)
			}
		}
		s := cl.node(name)
		s.kill()
		killed := time.Now()
		moved(fmt.Sprintf("SIGKILL of %s leading %s", name, strings.Join(led, ", ")), killed)
		s.start()
		devtest.Eventually(t, 60*time.Second, func() error { noExits(); return healthy(js) })
	}
	back := time.Now()

	w.halt()
	t.Logf("%d events written", w.committed.Load())
	// Caught up: the read model equals the fold, the outbox is empty and
	// EVENTS holds the store's last event.
	const bound = 60 * time.Second
	devtest.Eventually(t, bound, func() error {
		noExits()
		ctx := context.Background()
		if err := examplecheck.Verify(ctx, pool, js, examples.WalletBalanceName); err != nil {
			return err
		}
		return outboxEmpty(ctx, pool)
	})
	t.Logf("caught up %v after the last node was back (bound %v)", time.Since(back).Round(10*time.Millisecond), bound)
	noExits()
	verifyExactlyOnce(t, pool, js)
	checkFinalBalances(t, pool, checkExactlyOnce(t, readDerived(t, js, ownStream)))
	for _, p := range procs {
		if p.logged("feeder failed") || p.logged("projector failed") || p.logged("emitter failed") {
			t.Errorf("%s logged a failure", p.name)
		}
	}
}
