package memorybucket_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/memorybucket"
	"github.com/jetproj/jetproj/internal/natstest"
	"github.com/jetproj/jetproj/pkg/contract"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// Only a bucket in memory on several replicas is warned about: on file, or
// in memory on one server, a restart loses nothing the services need.
func TestWarnsAboutReplicatedBucketsInMemory(t *testing.T) {
	devtest.Slow(t)
	c := natstest.StartCluster(t, 3)
	_, js := devtest.Connect(t, c)
	ctx := context.Background()
	for _, tc := range []struct {
		bucket   string
		storage  jetstream.StorageType
		replicas int
		warn     bool
	}{
		{contract.StatusBucket, jetstream.MemoryStorage, 3, true},
		{contract.ProgressBucket, jetstream.FileStorage, 3, false},
		{"one_in_memory", jetstream.MemoryStorage, 1, false},
	} {
		if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: tc.bucket, Storage: tc.storage, Replicas: tc.replicas}); err != nil {
			t.Fatal(err)
		}
		var logs devtest.LogBuffer
		got := memorybucket.Warn(ctx, js, tc.bucket, slog.New(slog.NewTextHandler(&logs, nil)))
		if got != tc.warn {
			t.Errorf("%s (%v, R%d): warned %v, want %v", tc.bucket, tc.storage, tc.replicas, got, tc.warn)
		}
		if tc.warn && !strings.Contains(logs.String(), "nats kv rm "+tc.bucket) {
			t.Errorf("%s: the warning does not say how to move it: %s", tc.bucket, logs.String())
		}
	}
	if memorybucket.Warn(ctx, js, "absent", slog.New(slog.DiscardHandler)) {
		t.Error("warned about a bucket that does not exist")
	}
}
