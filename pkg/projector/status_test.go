package projector_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projector"
)

// Status only reads: on a server where nothing was initialised it creates
// no registry, and for an initialised projection it changes no bucket —
// even when asked with a replica count the server cannot give (one node
// here), which a bucket update would refuse.
func TestStatusChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	def := walletBalance("kv_status")
	st, err := projector.ReadStatus(ctx, b.js, def.Def(), 3)
	if err != nil || st.State != "not initialised" {
		t.Fatalf("status before init: %+v, %v; want not initialised", st, err)
	}
	if _, err := b.js.KeyValue(ctx, projector.RegistryBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("status created the registry (lookup: %v)", err)
	}
	b.publishWallets(t, 5, 2)
	b.run(t, "r1", def)
	b.waitFold(t, "kv_status", 30*time.Second)
	before := bucketConfigs(t, b.js)
	devtest.Eventually(t, 15*time.Second, func() error {
		st, err := projector.ReadStatus(ctx, b.js, def.Def(), 3)
		if err != nil {
			return err
		}
		if st.State != "active" || st.Partitions != 5 || st.Lag != 0 || st.Position != st.Head {
			return fmt.Errorf("status not caught up yet: %+v", st)
		}
		return nil
	})
	after := bucketConfigs(t, b.js)
	for name, cfg := range before {
		if after[name] != cfg {
			t.Errorf("bucket %s changed by status: %+v, was %+v", name, after[name], cfg)
		}
	}
}

// bucketConfigs describes every stream (KV buckets included) by name.
func bucketConfigs(t *testing.T, js jetstream.JetStream) map[string]string {
	t.Helper()
	out := map[string]string{}
	l := js.ListStreams(context.Background())
	for info := range l.Info() {
		out[info.Config.Name] = fmt.Sprintf("%s/%d replicas/%s", info.Config.Description, info.Config.Replicas, info.Config.Storage)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
