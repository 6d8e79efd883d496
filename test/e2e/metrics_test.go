package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/opsserver"
)

// wantSample waits until the service at addr reports the sample (metric
// name with its labels, e.g. `jetproj_feeder_lag{feeder="events"}`) equal
// to want.
func wantSample(t *testing.T, addr, sample string, want float64) {
	t.Helper()
	devtest.Eventually(t, 30*time.Second, func() error {
		code, body, err := httpGet(addr, opsserver.MetricsPath)
		if err != nil || code != 200 {
			return fmt.Errorf("metrics: %d %v", code, err)
		}
		for _, l := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(l, sample+" "); ok {
				got, err := strconv.ParseFloat(v, 64)
				if err != nil || got != want {
					return fmt.Errorf("%s = %s, want %v", sample, v, want)
				}
				return nil
			}
		}
		return fmt.Errorf("no %s", sample)
	})
}

// TestFeederLagGauge: jetproj_feeder_lag counts the events in the store the
// active feeder has not yet published — here while NATS is down — and
// returns to 0 once it has; the standby reports 0 and its lease gauge 0.
func TestFeederLagGauge(t *testing.T) {
	dbURL := newDatabase(t)
	pool := openStore(t, dbURL)
	ns := startNATS(t)
	js := ns.connect(t)
	envs := map[string]map[string]string{}
	for _, name := range []string{"f1", "f2"} {
		envs[name] = feederEnv(dbURL, ns.URL(), name)
		envs[name]["OPS_ADDR"] = opsAddr(t)
		// The active feeder keeps its lease (and its lag) for two thirds
		// of the TTL once NATS is gone: long enough to read the lag on a
		// busy machine (with the tests' 2 s it was ~1.3 s).
		envs[name]["FEEDER_LEASE_TTL"] = "30s"
		startFeeder(t, "feeder "+name, envs[name])
	}
	walletDeposits(t, pool, "w-1", 2, 100)
	var active string
	devtest.Eventually(t, 30*time.Second, func() error {
		h, err := leaseHolder(t.Context(), js)
		if err != nil || envs[h] == nil {
			return fmt.Errorf("holder %q: %v", h, err)
		}
		active = h
		return nil
	})
	standby := map[string]string{"f1": "f2", "f2": "f1"}[active]
	wantSample(t, envs[active]["OPS_ADDR"], `jetproj_feeder_lag{feeder="events"}`, 0)
	wantSample(t, envs[active]["OPS_ADDR"], `jetproj_feeder_position{feeder="events"}`, 3)
	wantSample(t, envs[active]["OPS_ADDR"], `jetproj_feeder_lease_held{feeder="events"}`, 1)
	wantSample(t, envs[standby]["OPS_ADDR"], `jetproj_feeder_lease_held{feeder="events"}`, 0)

	ns.kill()
	walletDeposits(t, pool, "w-1", 5, 100)
	wantSample(t, envs[active]["OPS_ADDR"], `jetproj_feeder_lag{feeder="events"}`, 5)
	wantSample(t, envs[standby]["OPS_ADDR"], `jetproj_feeder_lag{feeder="events"}`, 0)
	ns.start()
	devtest.Eventually(t, 60*time.Second, func() error {
		for _, env := range envs {
			code, body, err := httpGet(env["OPS_ADDR"], opsserver.MetricsPath)
			if err != nil || code != 200 {
				return fmt.Errorf("metrics: %d %v", code, err)
			}
			if strings.Contains(body, `jetproj_feeder_lease_held{feeder="events"} 1`) &&
				strings.Contains(body, `jetproj_feeder_lag{feeder="events"} 0`) &&
				strings.Contains(body, `jetproj_feeder_position{feeder="events"} 8`) {
				return nil
			}
		}
		return fmt.Errorf("no feeder active with lag 0 at position 8")
	})
}
