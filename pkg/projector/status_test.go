package projector_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
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
	st, err := projector.NewAdmin(b.js, projector.AdminOptions{Replicas: 3}).Status(ctx, def)
	if err != nil || st.State != "not initialised" {
		t.Fatalf("status before init: %+v, %v; want not initialised", st, err)
	}
	if _, err := b.js.KeyValue(ctx, contract.RegistryBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("status created the registry (lookup: %v)", err)
	}
	b.publishWallets(t, 5, 2)
	b.run(t, "r1", def)
	b.waitFold(t, "kv_status", 30*time.Second)
	before := bucketConfigs(t, b.js)
	devtest.Eventually(t, 15*time.Second, func() error {
		st, err := projector.NewAdmin(b.js, projector.AdminOptions{Replicas: 3}).Status(ctx, def)
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

// Status of a PostgreSQL projection whose tables an older projector wrote
// (schema v4: no replay column) brings them up to date rather than failing.
func TestStatusOfAnOlderSchema(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	pool := devtest.Pool(t)
	def := walletBalance("pg_status_v4", projection.Postgres(pool))
	if err := b.admin().Init(ctx, def); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ALTER TABLE jetproj.partitions DROP COLUMN replay; UPDATE jetproj.schema_version SET version = 4`); err != nil {
		t.Fatal(err)
	}
	if st, err := b.admin().Status(ctx, def); err != nil || st.State != "active" {
		t.Fatalf("status on schema v4: %+v, %v; want it read", st, err)
	}
}

// A projection deployed with ManualStart and reset before it was started
// is still waiting for `projector start` afterwards, also when a first
// reset failed.
func TestResetKeepsAManualStartWaiting(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	failHook := true
	def := walletBalance("kv_manual_reset", projection.ManualStart(), projection.OnReset(func(context.Context, pgx.Tx) error {
		if failHook {
			return errors.New("read model unreachable")
		}
		return nil
	}))
	if err := b.admin().Init(ctx, def); err != nil {
		t.Fatal(err)
	}
	before, err := b.admin().Status(ctx, def)
	if err != nil || before.State != "paused" {
		t.Fatalf("status after init: %+v, %v; want paused until started", before, err)
	}
	if err := projector.NewAdmin(b.js, projector.AdminOptions{Progress: t.Logf}).Reset(ctx, def); err == nil {
		t.Fatal("reset with a failing hook succeeded")
	}
	failHook = false
	if err := projector.NewAdmin(b.js, projector.AdminOptions{Progress: t.Logf}).Reset(ctx, def); err != nil {
		t.Fatal(err)
	}
	after, err := b.admin().Status(ctx, def)
	if err != nil || after.State != "paused" {
		t.Fatalf("status after reset: %+v, %v; want still waiting to be started", after, err)
	}
	if err := b.admin().Resume(ctx, def); err != nil {
		t.Fatal(err)
	}
	if st, err := b.admin().Status(ctx, def); err != nil || st.State != "active" {
		t.Fatalf("status after start: %+v, %v; want active", st, err)
	}
}

// Resuming, switching live or resetting a projection nobody initialised
// says so and creates nothing: a typo must not leave an active registry
// entry without the projection's schema behind.
func TestAdminRefusesAProjectionNeverInitialised(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	def := walletBalance("kv_never_initialised")
	a := b.admin()
	for name, op := range map[string]func() error{
		"Resume":  func() error { return a.Resume(ctx, def) },
		"SetLive": func() error { return a.SetLive(ctx, def, true) },
		"Reset":   func() error { return a.Reset(ctx, def) },
	} {
		if err := op(); !errors.Is(err, projector.ErrUnknownProjection) || !strings.Contains(err.Error(), "run init first") {
			t.Errorf("%s: got %v, want ErrUnknownProjection saying to run init first", name, err)
		}
	}
	reg, err := projector.OpenRegistry(ctx, b.js, 1)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok, err := reg.Get(ctx, def.Def().Name()); err != nil || ok {
		t.Fatalf("registry entry after the refused operations: %+v, %v; want none", e, err)
	}
}
