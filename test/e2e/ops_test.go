package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/opsserver"
)

// opsAddr returns a free loopback address for a process's operations
// endpoint.
func opsAddr(t *testing.T) string {
	t.Helper()
	port, err := devenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(port)
}

func httpGet(addr, path string) (int, string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestOperationsEndpoints: each service, run as a process, serves
// /healthz, /readyz (from its real connections) and /metrics with its own
// jetproj_ metrics, on the address OPS_ADDR names.
func TestOperationsEndpoints(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)

	fenv := feederEnv(dbURL, ns.URL(), "f")
	fenv["OPS_ADDR"] = opsAddr(t)
	penv := pipelineEnv(dbURL, ns.URL(), "p1")
	penv["OPS_ADDR"] = opsAddr(t)
	eenv := emitterEnv(dbURL, ns.URL(), "e1")
	eenv["OPS_ADDR"] = opsAddr(t)
	startFeeder(t, "feeder", fenv)
	startProjector(t, "projector", penv)
	startEmitter(t, "emitter", eenv)
	walletDeposits(t, pool, "w-1", 3, 100)
	devtest.Eventually(t, 60*time.Second, func() error { return outboxEmpty(t.Context(), pool) })

	for _, svc := range []struct {
		name, addr string
		metrics    []string
	}{
		{"feeder", fenv["OPS_ADDR"], []string{`jetproj_feeder_events_published_total{feeder="events"} 4`, `jetproj_feeder_lease_held{feeder="events"} 1`, `jetproj_feeder_lag{feeder="events"} 0`}},
		{"projector", penv["OPS_ADDR"], []string{"jetproj_projector_messages_total{projection=\"wallet_balance\"}", "jetproj_projector_slots_owned{projection=\"wallet_balance\"} 64",
			"jetproj_projector_lag{projection=\"wallet_balance\"}", "jetproj_projector_partitions_parked{projection=\"wallet_balance\"} 0"}},
		{"emitter", eenv["OPS_ADDR"], []string{"jetproj_emitter_events_emitted_total", "jetproj_emitter_lease_held 1"}},
	} {
		devtest.Eventually(t, 30*time.Second, func() error {
			for _, path := range []string{opsserver.HealthPath, opsserver.ReadyPath} {
				code, body, err := httpGet(svc.addr, path)
				if err != nil || code != http.StatusOK {
					return fmt.Errorf("%s %s: %d %q %v", svc.name, path, code, body, err)
				}
			}
			code, body, err := httpGet(svc.addr, opsserver.MetricsPath)
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("%s metrics: %d %v", svc.name, code, err)
			}
			for _, m := range append(svc.metrics, "process_resident_memory_bytes") {
				if !strings.Contains(body, m) {
					return fmt.Errorf("%s /metrics lacks %q", svc.name, m)
				}
			}
			return nil
		})
	}
	// The containers' health check is the binary itself.
	for name, c := range map[string]struct {
		path string
		env  map[string]string
	}{"feeder": {bins.build(t).feeder, fenv}, "projector": {bins.build(t).projector, penv}, "emitter": {bins.build(t).emitter, eenv}} {
		if r := runBinary(t, c.path, map[string]string{"OPS_ADDR": c.env["OPS_ADDR"]}, "healthcheck"); r.code != 0 {
			t.Errorf("%s healthcheck: exit %d: %s", name, r.code, r.stderr)
		}
	}
	// Readiness follows the connection: with NATS gone, not ready.
	ns.kill()
	devtest.Eventually(t, 30*time.Second, func() error {
		code, body, err := httpGet(penv["OPS_ADDR"], opsserver.ReadyPath)
		if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "nats:") {
			return fmt.Errorf("projector readyz without NATS: %d %q %v", code, body, err)
		}
		return nil
	})
	if r := runBinary(t, bins.build(t).projector, map[string]string{"OPS_ADDR": penv["OPS_ADDR"]}, "healthcheck"); r.code != 1 {
		t.Errorf("projector healthcheck without NATS: exit %d, want 1: %s", r.code, r.stderr)
	}
}
