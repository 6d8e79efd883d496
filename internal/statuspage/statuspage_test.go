package statuspage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projector"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func TestParseTokens(t *testing.T) {
	tok, err := statuspage.ParseTokens([]byte("# ops\n\nalice: 0123456789abcdef0123\nbob:fedcba9876543210xx\n"))
	if err != nil {
		t.Fatal(err)
	}
	if who, ok := tok.Who("0123456789abcdef0123"); !ok || who != "alice" {
		t.Fatalf("Who(alice's token) = %q %v", who, ok)
	}
	if who, ok := tok.Who("0123456789abcdef012"); ok {
		t.Fatalf("a prefix of a token is accepted as %q", who)
	}
	if _, ok := tok.Who(""); ok {
		t.Fatal("the empty token is accepted")
	}
	_, err = statuspage.ParseTokens([]byte("alice\nb b:0123456789abcdef\ncarol:short\nalice2:0123456789abcdef\nalice2:0123456789abcdef\n"))
	for _, want := range []string{"line 1: want name:token", `line 2: name "b b"`, "line 3 (carol): token shorter", `line 5: name "alice2" given twice`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseTokens: %v, want it to say %q", err, want)
		}
	}
	if _, err := statuspage.ParseTokens([]byte("# nothing\n")); err == nil {
		t.Error("an empty token file is accepted")
	}
}

// The settings are validated with the others: every problem at once.
func TestConfig(t *testing.T) {
	_, err := config.Load[statuspage.Config](config.WithEnvironment(map[string]string{
		"OPS_ADMIN": "yes", "OPS_STATUS_INTERVAL": "10ms"}))
	var cerr *config.Error
	if !errors.As(err, &cerr) || len(cerr.Problems) != 2 {
		t.Fatalf("Load: %v, want OPS_ADMIN and OPS_STATUS_INTERVAL reported", err)
	}
	_, err = config.Load[statuspage.Config](config.WithEnvironment(map[string]string{"OPS_ADMIN": "on"}))
	if err == nil || !strings.Contains(err.Error(), "OPS_ADMIN_TOKEN_FILE: needed with OPS_ADMIN=on") {
		t.Fatalf("Load: %v, want the missing token file reported", err)
	}
	_, err = config.Load[statuspage.Config](config.WithEnvironment(map[string]string{"OPS_ADMIN": "on", "OPS_ADMIN_TOKEN_FILE": "/nonexistent/tokens"}))
	if err == nil || !strings.Contains(err.Error(), "OPS_ADMIN_TOKEN_FILE: open /nonexistent/tokens") {
		t.Fatalf("Load: %v, want the unreadable token file reported", err)
	}
	cfg, err := config.Load[statuspage.Config](config.WithEnvironment(map[string]string{}))
	if err != nil || cfg.AdminOn() || cfg.Interval != 5*time.Second {
		t.Fatalf("defaults: %+v %v, want admin off and 5s", cfg, err)
	}
}

func TestKey(t *testing.T) {
	if got, want := statuspage.Key("feeder", "events", "host.1 b*"), "feeder.events.host_1_b_"; got != want {
		t.Fatalf("Key = %q, want %q", got, want)
	}
}

// actions records what the page asked for.
type actions struct {
	mu  sync.Mutex
	got []statuspage.Action
}

func (a *actions) Do(_ context.Context, act statuspage.Action) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got = append(a.got, act)
	if act.Projection == "broken" {
		return "", errors.New("no replica answered")
	}
	return act.Projection + " " + act.Op + " done", nil
}

func post(t *testing.T, url, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewBufferString(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Two services publish to the bucket; each one's page shows both, with
// rates computed from the counters' growth; actions need admin, actions and
// a known token.
func TestPagesShareTheBucket(t *testing.T) {
	n := devtest.NATS(t)
	_, js := devtest.Connect(t, n)
	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tokenFile := filepath.Join(t.TempDir(), "tokens")
	const token = "0123456789abcdef0123"
	if err := os.WriteFile(tokenFile, []byte("alice:"+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := statuspage.Config{Admin: "off", Interval: 500 * time.Millisecond}
	feederPage, err := statuspage.New(statuspage.Options{Config: cfg, JS: js, Service: "feeder", Instance: "f1"})
	if err != nil {
		t.Fatal(err)
	}
	var published atomic.Int64
	feederPage.Collect(func(context.Context) (map[string]any, error) {
		return map[string]any{statuspage.Key("feeder", "events", "f1"): statuspage.FeederSnap{
			Name: "events", Stream: "EVENTS", Instance: "f1", State: "caught-up", Active: true,
			Position: 10, StoreHead: 12, Lag: 2, Published: float64(published.Add(100))}}, nil
	})
	acts := &actions{}
	admin := cfg
	admin.Admin, admin.AdminTokenFile = "on", tokenFile
	projPage, err := statuspage.New(statuspage.Options{Config: admin, JS: js, Service: "projector", Instance: "p1", Actions: acts})
	if err != nil {
		t.Fatal(err)
	}
	projPage.Collect(func(context.Context) (map[string]any, error) {
		return map[string]any{
			statuspage.Key("projection", "wallet_balance"): statuspage.ProjectionSnap{Status: projector.Status{
				Name: "wallet_balance", Kind: "partitioned", State: "active", Position: 50, Head: 100, Lag: 50,
				Owners: map[string]int{"p1": 64}}, ReplayUntil: 80},
			statuspage.Key("projector", "p1"): statuspage.ReplicaSnap{Replica: "p1", Projections: []string{"wallet_balance"},
				Messages: map[string]float64{"wallet_balance": float64(published.Load())}, Actions: projPage.ActionLog()},
		}, nil
	})
	var wg sync.WaitGroup
	for _, p := range []*statuspage.Page{feederPage, projPage} {
		wg.Go(func() { _ = p.Run(ctx) })
	}
	defer wg.Wait()
	defer cancel()

	fsrv := httptest.NewServer(feederPage.Handler())
	defer fsrv.Close()
	psrv := httptest.NewServer(projPage.Handler())
	defer psrv.Close()

	var v statuspage.View
	devtest.Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(fsrv.URL + statuspage.StatusPath)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		v = statuspage.View{}
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			return err
		}
		if len(v.Feeders) != 1 || len(v.Projections) != 1 || len(v.History) < 3 {
			return fmt.Errorf("%d feeders, %d projections, %d samples", len(v.Feeders), len(v.Projections), len(v.History))
		}
		// Each page publishes on its own clock: wait for a sample in which
		// both counters grew.
		if last := v.History[len(v.History)-1]; last.Rate[statuspage.StageFeeder] <= 0 ||
			last.Rate[statuspage.StageProjector+"wallet_balance"] <= 0 || last.Lag["wallet_balance"] != 50 {
			return fmt.Errorf("last sample %+v", last)
		}
		return nil
	})
	if f := v.Feeders[0]; f.Active != "f1" || f.Lag != 2 || f.Rate <= 0 {
		t.Fatalf("feeder view %+v", f)
	}
	if p := v.Projections[0]; !p.Rebuilding || p.Progress != 50.0/80 || p.ETASeconds <= 0 || p.Owners["p1"] != 64 {
		t.Fatalf("projection view %+v", p)
	}
	if v.Admin || v.Service != "feeder" {
		t.Fatalf("feeder page: admin %v, service %q", v.Admin, v.Service)
	}
	// On file: a replicated bucket in memory can lose every full copy in
	// rolling restarts and stay without a leader.
	if info, err := js.Stream(ctx, contract.KVStream(contract.StatusBucket)); err != nil {
		t.Fatal(err)
	} else if st := info.CachedInfo().Config.Storage; st != jetstream.FileStorage {
		t.Fatalf("status bucket storage %v, want file", st)
	}

	// The page and its assets, with a policy that allows only them.
	for _, path := range []string{"/", "/assets/app.js", "/assets/app.css"} {
		resp, err := http.Get(fsrv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		if path == "/" && !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
			t.Fatalf("GET /: Content-Security-Policy %q", resp.Header.Get("Content-Security-Policy"))
		}
	}
	resp, err := http.Get(fsrv.URL + "/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /nothing: %s, want 404", resp.Status)
	}

	retry := `{"op":"retry","projection":"wallet_balance","partition":"wallet/w-1"}`
	for _, c := range []struct {
		url, token, body string
		code             int
	}{
		{fsrv.URL, token, retry, http.StatusForbidden}, // admin off
		{psrv.URL, "", retry, http.StatusUnauthorized}, // no token
		{psrv.URL, "x" + token, retry, http.StatusUnauthorized},
		{psrv.URL, token, `{"op":"retry","projection":"wallet_balance"}`, http.StatusBadRequest},
		{psrv.URL, token, `{"op":"drop","projection":"wallet_balance"}`, http.StatusBadRequest},
		{psrv.URL, token, `{"op":"live","projection":"wallet_balance","live":"maybe"}`, http.StatusBadRequest},
		{psrv.URL, token, `{"op":"start","projection":"broken"}`, http.StatusBadGateway},
		{psrv.URL, token, retry, http.StatusOK},
	} {
		if code, body := post(t, c.url+statuspage.ActionsPath, c.token, c.body); code != c.code {
			t.Errorf("POST %s (token %q): %d %s, want %d", c.body, c.token, code, body, c.code)
		}
	}
	acts.mu.Lock()
	if len(acts.got) != 2 || acts.got[1].Partition != "wallet/w-1" {
		t.Errorf("actions done: %+v, want the failing start and the retry", acts.got)
	}
	acts.mu.Unlock()
	// Every page lists the actions, with who asked.
	devtest.Eventually(t, 10*time.Second, func() error {
		v := feederPage.View(ctx, 0)
		if len(v.Actions) != 2 || v.Actions[0].Who != "alice" || v.Actions[0].Op != "retry" || v.Actions[1].Error == "" {
			return fmt.Errorf("actions shown: %+v", v.Actions)
		}
		return nil
	})
}

func TestMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetproj_test_total", Help: "h"}, []string{"projection"})
	reg.MustRegister(c)
	c.WithLabelValues("a").Add(3)
	c.WithLabelValues("b").Add(4)
	if got := statuspage.Metric(reg, "jetproj_test_total", "projection"); got["a"] != 3 || got["b"] != 4 {
		t.Fatalf("by projection: %v", got)
	}
	if got := statuspage.Metric(reg, "jetproj_test_total", "")[""]; got != 7 {
		t.Fatalf("sum: %v", got)
	}
}
