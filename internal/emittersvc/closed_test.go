package emittersvc_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/emittersvc"
	"github.com/jetproj/jetproj/internal/natstest"
	"github.com/jetproj/jetproj/internal/opsserver"
)

func TestMain(m *testing.M) { devtest.Main(m) }

// TestConnectionClosedByServerEndsService (issue 17): when the server closes
// the emitter's connection with "maximum control line exceeded", after which
// nats.go never reconnects, the service does not stay up answering 200 on
// /healthz with a dead connection: it ends with exit code 1 and says why.
func TestConnectionClosedByServerEndsService(t *testing.T) {
	n := devtest.NATS(t)
	proxy := natstest.NewProxy(t, n.URL())
	port, err := devenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	env := map[string]string{
		"DATABASE_URL":      devtest.Postgres(t),
		"NATS_URL":          proxy.URL(),
		"EMITTER_LEASE_TTL": "1m", // nothing else on the wire meanwhile
		"OPS_ADDR":          addr,
		"LOG_FORMAT":        "json",
	}
	var stderr devtest.LogBuffer
	code := make(chan int, 1)
	go func() { code <- emittersvc.Main(t.Context(), nil, env, &strings.Builder{}, &stderr) }()
	// Running: alive, and holding its lease (nothing JetStream is still
	// creating when the test's server shuts down).
	devtest.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(stderr.String(), "lease: acquired") {
			return errors.New("the emitter holds no lease yet")
		}
		return probe(addr, opsserver.HealthPath)
	})
	if err := proxy.SendToServer(natstest.OverlongPub()); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-code:
		if c != 1 {
			t.Errorf("exit code %d, want 1", c)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the emitter still runs 15s after the server closed its connection for good (/healthz: %v)\n%s",
			probe(addr, opsserver.HealthPath), stderr.String())
	}
	if !strings.Contains(stderr.String(), "maximum control line") {
		t.Errorf("the log does not name the server's error:\n%s", stderr.String())
	}
}

func probe(addr, path string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return nil
}
