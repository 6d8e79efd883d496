package k8s_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/pkg/contract"
)

// TestNATSClusterRuns runs prod's nats.conf for real: three servers in this
// process (routes pointed at loopback ports instead of nats-<i>.nats-headless),
// with the operator authentication of auth.conf, and a service connecting
// with its credentials file through internal/natsconn creates a stream with 3
// replicas, as FEEDER_STREAM_REPLICAS=3 makes the feeder do.
func TestNATSClusterRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three NATS servers")
	}
	o, err := build("overlays/prod")
	if err != nil {
		t.Fatal(err)
	}
	s := o.statefulSets["nats"]
	c := s.Spec.Template.Spec.Containers[0]
	root := materialize(t, o, "nats", natsPodSpec(s), c, func(_, _, content string) string {
		if strings.Contains(content, "REPLACE_WITH") {
			return testAuth()
		}
		return content
	})
	defer os.RemoveAll(root)
	conf := filepath.Join(root, c.Args[slices.Index(c.Args, "-c")+1])

	n := int(*s.Spec.Replicas)
	clusterPorts := make([]int, n)
	for i := range clusterPorts {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		clusterPorts[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	var servers []*server.Server
	defer func() {
		for _, srv := range servers {
			srv.Shutdown()
			srv.WaitForShutdown()
		}
	}()
	for i := range n {
		t.Setenv("POD_NAME", fmt.Sprintf("nats-%d", i))
		opts, err := server.ProcessConfigFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		if len(opts.Routes) != n {
			t.Fatalf("nats.conf: %d routes for %d servers", len(opts.Routes), n)
		}
		var routes []string
		for j, p := range clusterPorts {
			if !strings.HasPrefix(opts.Routes[j].Host, fmt.Sprintf("nats-%d.", j)) {
				t.Fatalf("route %d is %s", j, opts.Routes[j])
			}
			routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
		}
		opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
		opts.Cluster.Host, opts.Cluster.Port = "127.0.0.1", clusterPorts[i]
		opts.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		opts.StoreDir = filepath.Join(root, opts.StoreDir, opts.ServerName)
		opts.NoLog, opts.NoSigs = true, true
		srv, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, srv)
		srv.Start()
	}
	var urls []string
	for _, srv := range servers {
		if !srv.ReadyForConnections(10 * time.Second) {
			t.Fatal("a NATS server did not start")
		}
		urls = append(urls, srv.ClientURL())
	}
	// The servers find each other and elect a JetStream meta leader.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		leaders, current := 0, 0
		for _, srv := range servers {
			if srv.JetStreamIsLeader() {
				leaders++
			}
			if srv.JetStreamIsCurrent() {
				current++
			}
		}
		if leaders == 1 && current == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the JetStream cluster did not form: %d leaders, %d of %d servers current", leaders, current, n)
		}
	}

	creds := filepath.Join(root, "user.creds")
	if err := os.WriteFile(creds, testAuthOperator().creds, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := natsconn.Connect(ctx, natsconn.Config{URL: strings.Join(urls, ","), Creds: creds}, nil)
	if err != nil {
		t.Fatalf("connecting with a credentials file: %v", err)
	}
	defer conn.NC.Close()
	for {
		_, err = conn.JS.CreateStream(ctx, jetstream.StreamConfig{Name: contract.EventsStream, Subjects: []string{contract.AllEvents}, Replicas: n})
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond) // the JetStream cluster elects its meta leader
	}
	if err != nil {
		t.Fatalf("a stream with %d replicas on prod's NATS cluster: %v", n, err)
	}
	if _, err := conn.JS.Publish(ctx, "events.wallet.w-1", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	// Without credentials the cluster refuses.
	if _, err := natsconn.Connect(ctx, natsconn.Config{URL: urls[0]}, nil); err == nil {
		t.Error("prod's NATS accepted a connection without credentials")
	}
}
