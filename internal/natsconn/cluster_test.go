package natsconn_test

import (
	"strings"
	"testing"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/natstest"
)

// TestWarnSingleReplicaOnCluster (issue 13, item 5): connected to a
// cluster of three, a service about to create R1 streams and buckets is
// warned, naming the setting; R3 on the cluster and R1 on a single server
// are not.
func TestWarnSingleReplicaOnCluster(t *testing.T) {
	cl := natstest.StartCluster(t, 3)
	logger, logs := newLogger()
	c := connect(t, natsconn.Config{URL: cl.URL()}, logger)
	if n := c.ClusterSize(); n != 3 {
		t.Errorf("cluster size %d, want 3", n)
	}
	if !c.WarnSingleReplica(1, "FEEDER_STREAM_REPLICAS", "EVENTS", "KV_jetproj_feeder_leases") {
		t.Error("no warning for R1 on a cluster of three")
	}
	out := logs.String()
	for _, want := range []string{"level=WARN", "FEEDER_STREAM_REPLICAS=3", "EVENTS", "KV_jetproj_feeder_leases", "cluster_servers=3"} {
		if !strings.Contains(out, want) {
			t.Errorf("warning does not say %q:\n%s", want, out)
		}
	}
	if c.WarnSingleReplica(3, "FEEDER_STREAM_REPLICAS", "EVENTS") {
		t.Error("warned for R3 on a cluster")
	}

	single := connect(t, natsconn.Config{URL: devtest.NATS(t).URL()}, nil)
	if n := single.ClusterSize(); n != 1 {
		t.Errorf("single server: cluster size %d, want 1", n)
	}
	if single.WarnSingleReplica(1, "FEEDER_STREAM_REPLICAS", "EVENTS") {
		t.Error("warned for R1 on a single server")
	}
}
