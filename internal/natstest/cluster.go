package natstest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
)

// Cluster is a JetStream cluster of embedded servers on loopback, named
// n1, n2 …, each with its own store directory.
type Cluster struct {
	t       testing.TB
	opts    []server.Options
	servers []*server.Server // nil while a node is stopped
}

// StartCluster starts n clustered servers with JetStream and waits until
// the cluster has a meta leader. They are shut down when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, opts: make([]server.Options, n), servers: make([]*server.Server, n)}
	client, route := make([]int, n), make([]int, n)
	var routes []string
	for i := range n {
		var err error
		if client[i], err = devenv.FreePort(); err != nil {
			t.Fatal(err)
		}
		if route[i], err = devenv.FreePort(); err != nil {
			t.Fatal(err)
		}
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", route[i]))
	}
	dir := t.TempDir()
	for i := range n {
		c.opts[i] = server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       client[i],
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			NoSigs:     true,
			NoLog:      true,
			Cluster:    server.ClusterOpts{Name: "jetproj", Host: "127.0.0.1", Port: route[i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}
	}
	for i := range n {
		c.Start(i)
	}
	t.Cleanup(func() {
		for i := range c.servers {
			c.Stop(i)
		}
	})
	c.WaitMeta()
	return c
}

// URL lists every node's client URL, comma-separated (NATS_URL).
func (c *Cluster) URL() string {
	var urls []string
	for _, o := range c.opts {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", o.Port))
	}
	return strings.Join(urls, ",")
}

// Start starts node i (again, with its store).
func (c *Cluster) Start(i int) {
	c.t.Helper()
	if c.servers[i] != nil {
		return
	}
	o := c.opts[i] // a copy: the server keeps and changes its options
	s, err := server.NewServer(&o)
	if err != nil {
		c.t.Fatalf("node n%d: %v", i+1, err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		c.t.Fatalf("node n%d not ready", i+1)
	}
	c.servers[i] = s
}

// Stop shuts node i down and waits until it is gone.
func (c *Cluster) Stop(i int) {
	if s := c.servers[i]; s != nil {
		s.Shutdown()
		s.WaitForShutdown()
		c.servers[i] = nil
	}
}

// Node returns the index of the node named name (n1 → 0); -1 if none.
func (c *Cluster) Node(name string) int {
	for i, o := range c.opts {
		if o.ServerName == name {
			return i
		}
	}
	return -1
}

// WaitMeta waits until a running node is the cluster's meta leader and
// every running node is current with it.
func (c *Cluster) WaitMeta() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader, current := false, true
		for _, s := range c.servers {
			if s == nil {
				continue
			}
			leader = leader || s.JetStreamIsLeader()
			current = current && s.JetStreamIsCurrent()
		}
		if leader && current {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatal("natstest: no JetStream meta leader within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StreamLeader returns the index of the node leading stream (a KV bucket
// B is the stream KV_B), asking through js.
func StreamLeader(ctx context.Context, c *Cluster, js jetstream.JetStream, stream string) (int, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return -1, err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, errors.New("natstest: stream " + stream + " has no leader")
	}
	return c.Node(info.Cluster.Leader), nil
}
