package lease_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/jsretry"
	"github.com/jetproj/jetproj/internal/lease"
	"github.com/jetproj/jetproj/internal/natstest"
)

// clusterKV connects to the cluster (every node's URL) and opens the
// bucket; the connection is closed when the test ends.
func clusterKV(t *testing.T, c *natstest.Cluster, bucket string) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	_, js := devtest.Connect(t, c)
	var kv jetstream.KeyValue
	devtest.Eventually(t, 30*time.Second, func() (err error) {
		kv, err = js.KeyValue(t.Context(), bucket)
		return err
	})
	return js, kv
}

// TestRunThroughLeaderMoves (issue 13, item 3): two contenders hold one key
// of an R3 lease bucket on a three-node cluster whose bucket leader is
// stopped three times (and brought back). Never do both run work at once,
// neither Run returns, and after each move the work runs again within the
// TTL (plus a poll) of the bucket accepting writes again. The times are
// printed.
func TestRunThroughLeaderMoves(t *testing.T) {
	devtest.Slow(t)
	const ttl = 3 * time.Second
	cl := natstest.StartCluster(t, 3)
	ctx := jsretry.NewContext(t.Context(), jsretry.New(logger(t)))
	nc, err := nats.Connect(cl.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lease.EnsureBucket(ctx, js, bucket, ttl, 3); err != nil {
		t.Fatal(err)
	}
	tr := &tracker{}
	_, kvA := clusterKV(t, cl, bucket)
	_, kvB := clusterKV(t, cl, bucket)
	a := start(t, kvA, "a", tr)
	b := start(t, kvB, "b", tr)
	running := func() bool { return tr.running.Load() > 0 }
	devtest.Eventually(t, 10*time.Second, func() error {
		if !running() {
			return errors.New("nobody holds the lease")
		}
		return nil
	})
	probeJS, probe := clusterKV(t, cl, bucket)
	for round := range 3 {
		var leader int
		devtest.Eventually(t, 30*time.Second, func() (err error) {
			leader, err = natstest.StreamLeader(t.Context(), cl, probeJS, "KV_"+bucket)
			return err
		})
		stopped := time.Now()
		cl.Stop(leader)
		// The bucket accepts writes again once a new leader is elected.
		devtest.Eventually(t, 30*time.Second, func() error {
			pctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			_, err := probe.Put(pctx, "probe", []byte("x"))
			return err
		})
		writable := time.Now()
		devtest.Eventually(t, ttl+ttl/4+5*time.Second, func() error {
			if !running() {
				return fmt.Errorf("nobody runs work %v after the bucket was writable again", time.Since(writable))
			}
			return nil
		})
		resumed := time.Now()
		t.Logf("move %d: stopped n%d; bucket writable after %v; work runs %v later",
			round+1, leader+1, writable.Sub(stopped).Round(10*time.Millisecond), resumed.Sub(writable).Round(10*time.Millisecond))
		if d := resumed.Sub(writable); d > ttl+ttl/4 {
			t.Errorf("move %d: work resumed %v after the bucket was writable again, want within the TTL (%v) and a poll", round+1, d, ttl)
		}
		tr.check(t)
		cl.Start(leader)
		cl.WaitMeta()
	}
	for _, c := range []*contender{a, b} {
		select {
		case <-c.done:
			t.Fatalf("Run of %s returned: %v", c.name, c.err)
		default:
		}
	}
	tr.check(t)
}
