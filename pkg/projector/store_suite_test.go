package projector_test

import (
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projector"
	"github.com/jetproj/jetproj/pkg/projector/storetest"
)

var storeSeq atomic.Int64

var nonName = regexp.MustCompile(`[^a-z0-9_]+`)

// uniqueName is a bucket- and SQL-safe name for one store of one subtest.
func uniqueName(t *testing.T) string {
	name := nonName.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	return fmt.Sprintf("s%d_%s", storeSeq.Add(1), name)
}

// TestKVStoreSuite runs the StateStore suite against a JetStream KV bucket
// per subtest, all in one embedded server. KVStore writes records one by
// one, fences them by compare-and-set and claims a slot's watermark in
// Fence.
func TestKVStoreSuite(t *testing.T) {
	t.Parallel()
	_, js := devtest.Connect(t, devtest.NATS(t))
	storetest.Run(t, func(t *testing.T) projector.StateStore {
		return projector.NewKVStore(js, "jetproj_state_"+uniqueName(t), 1)
	}, storetest.Options{FenceClaimsWatermarks: true})
}

// TestPGStoreSuite runs the StateStore suite against one database, with a
// projection name per subtest. PGStore commits a batch in one transaction
// and checks the slots' tokens in it.
func TestPGStoreSuite(t *testing.T) {
	t.Parallel()
	pool := devtest.Pool(t)
	storetest.Run(t, func(t *testing.T) projector.StateStore {
		return projector.NewPGStore(pool, uniqueName(t))
	}, storetest.Options{Transactional: true, TokensFenceCommits: true})
}

// TestTenantStoreSuite runs the StateStore suite against a TenantStore over
// two databases. The suite works in the second tenant, so its records and
// Tx writes live in one database and the slot watermarks (committed last)
// in the other.
func TestTenantStoreSuite(t *testing.T) {
	t.Parallel()
	pools := map[string]*pgxpool.Pool{}
	for _, tenant := range []string{"acme", "globex"} {
		pool := devtest.Pool(t)
		pools[tenant] = pool
	}
	storetest.Run(t, func(t *testing.T) projector.StateStore {
		return projector.NewTenantStore(pools, uniqueName(t))
	}, storetest.Options{Transactional: true, TokensFenceCommits: true, Tenant: "globex"})
}
