package projector_test

import (
	"testing"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/process"
	"github.com/jetproj/jetproj/pkg/projector"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

// TestOptionsDefaultsAreTheService: the projector service's variables
// (projectorsvc.Settings, whose tags the README's table shows) fill
// Options; New gives a zero Options the same defaults.
func TestOptionsDefaultsAreTheService(t *testing.T) {
	t.Parallel()
	nc, _ := devtest.Connect(t, devtest.NATS(t))
	p, err := projector.New(nc, projector.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, svc := projector.OptionsOf(p), config.Defaults[projectorsvc.Settings]()
	if got.LeaseTTL != svc.LeaseTTL {
		t.Errorf("LeaseTTL defaults to %v, PROJECTOR_LEASE_TTL to %v", got.LeaseTTL, svc.LeaseTTL)
	}
	if got.Replicas != svc.StoreReplicas {
		t.Errorf("Replicas defaults to %d, PROJECTOR_STORE_REPLICAS to %d", got.Replicas, svc.StoreReplicas)
	}
	// PROJECTOR_REPLICA: "(default: host name and process id)".
	if got.Replica != process.Instance() {
		t.Errorf("Replica defaults to %q, want host name and process id %q", got.Replica, process.Instance())
	}
}
