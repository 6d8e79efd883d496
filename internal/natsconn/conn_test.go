package natsconn_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/natsconn"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func newLogger() (*slog.Logger, *devtest.LogBuffer) {
	b := &devtest.LogBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func connect(t *testing.T, cfg natsconn.Config, logger *slog.Logger) *natsconn.Conn {
	t.Helper()
	c, err := natsconn.Connect(ctx(t), cfg, logger)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// roundTrip creates a stream, publishes to it and reads the message count.
func roundTrip(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.CreateOrUpdateStream(ctx(t), jetstream.StreamConfig{Name: stream, Subjects: []string{stream + ".>"}})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx(t), stream+".a", []byte("x")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	info, err := s.Info(ctx(t))
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return info.State.Msgs
}

func TestConnect(t *testing.T) {
	t.Parallel()
	n := devtest.NATS(t)
	logger, logs := newLogger()
	c := connect(t, natsconn.Config{URL: n.URL(), Name: "test-conn"}, logger)
	if c.Embedded != nil {
		t.Fatal("Embedded set for a configured URL")
	}
	if got := roundTrip(t, c.JS, "T"); got != 1 {
		t.Fatalf("messages = %d, want 1", got)
	}
	c.Close()
	c.Close()
	if !c.NC.IsClosed() {
		t.Fatal("connection not closed")
	}
	if !strings.Contains(logs.String(), "connected to NATS") || !strings.Contains(logs.String(), "name=test-conn") {
		t.Errorf("logs:\n%s", logs)
	}
}

func TestConnectEmbedded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := natsconn.Config{EmbeddedDir: dir, EmbeddedPort: 0}
	c, err := natsconn.Connect(ctx(t), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Embedded == nil || c.Embedded.Dir() != dir {
		t.Fatalf("embedded = %+v", c.Embedded)
	}
	url := c.Embedded.URL()
	if got := roundTrip(t, c.JS, "E"); got != 1 {
		t.Fatalf("messages = %d, want 1", got)
	}
	c.Close()
	if nc, err := nats.Connect(url, nats.Timeout(time.Second)); err == nil {
		nc.Close()
		t.Fatal("embedded server still accepts connections after Close")
	}

	// The store directory keeps the stream.
	c = connect(t, cfg, nil)
	if got := roundTrip(t, c.JS, "E"); got != 2 {
		t.Fatalf("messages after restart = %d, want 2", got)
	}
}

func TestConnectEmbeddedPortInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, err = natsconn.Connect(ctx(t), natsconn.Config{EmbeddedDir: t.TempDir(), EmbeddedPort: port}, nil)
	if !errors.Is(err, natsconn.ErrEmbeddedPortInUse) || !strings.Contains(err.Error(), fmt.Sprint(port)) {
		t.Fatalf("err = %v", err)
	}
}

// authServer starts a NATS server with JetStream that accepts one user.
func authServer(t *testing.T, user, password string) (host string, port int) {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  t.TempDir(),
		Users:     []*server.User{{Username: user, Password: password}},
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("auth server not ready")
	}
	addr := srv.Addr().(*net.TCPAddr)
	return addr.IP.String(), addr.Port
}

func TestConnectAuth(t *testing.T) {
	t.Parallel()
	const password = "s3cr3t-Pa55word"
	host, port := authServer(t, "jetproj", password)
	plain := fmt.Sprintf("nats://%s:%d", host, port)

	t.Run("user and password", func(t *testing.T) {
		c := connect(t, natsconn.Config{URL: plain, User: "jetproj", Password: password}, nil)
		if got := roundTrip(t, c.JS, "A"); got != 1 {
			t.Fatalf("messages = %d", got)
		}
	})
	t.Run("user info in URL", func(t *testing.T) {
		c := connect(t, natsconn.Config{URL: fmt.Sprintf("nats://jetproj:%s@%s:%d", password, host, port)}, nil)
		if _, err := c.JS.AccountInfo(ctx(t)); err != nil {
			t.Fatal(err)
		}
	})

	const wrong = "wr0ng-Pa55word"
	for _, tc := range []struct {
		name    string
		cfg     natsconn.Config
		wantURL string
	}{
		{"wrong password", natsconn.Config{URL: plain, User: "jetproj", Password: wrong}, plain},
		{"wrong password in URL", natsconn.Config{URL: fmt.Sprintf("nats://jetproj:%s@%s:%d", wrong, host, port)},
			fmt.Sprintf("nats://REDACTED@%s:%d", host, port)},
		{"no credentials", natsconn.Config{URL: plain}, plain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logger, logs := newLogger()
			start := time.Now()
			_, err := natsconn.Connect(ctx(t), tc.cfg, logger)
			if err == nil {
				t.Fatal("connected")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("failed after %v, want fast", d)
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("err = %v, want nats.ErrAuthorization", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.wantURL) {
				t.Errorf("error %q does not name %s", msg, tc.wantURL)
			}
			for _, s := range []string{wrong, password} {
				if strings.Contains(msg, s) || strings.Contains(logs.String(), s) {
					t.Errorf("secret leaked:\nerror: %s\nlogs: %s", msg, logs)
				}
			}
		})
	}
}

func TestConnectUnreachable(t *testing.T) {
	t.Parallel()
	port, err := devenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("nats://user:hunter22@127.0.0.1:%d", port)
	start := time.Now()
	_, err = natsconn.Connect(ctx(t), natsconn.Config{URL: url}, nil)
	if err == nil {
		t.Fatal("connected to nothing")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failed after %v, want fast", d)
	}
	want := fmt.Sprintf("natsconn: connect to nats://REDACTED@127.0.0.1:%d: ", port)
	if !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "hunter22") {
		t.Fatalf("err = %q, want prefix %q and no password", err, want)
	}
	if !errors.Is(err, nats.ErrNoServers) {
		t.Fatalf("err = %v, want nats.ErrNoServers", err)
	}
}

func TestConnectInvalidConfig(t *testing.T) {
	t.Parallel()
	_, err := natsconn.Connect(ctx(t), natsconn.Config{URL: "nats://x:4222", User: "u"}, nil)
	if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "NATS_PASSWORD: required") {
		t.Fatalf("err = %v", err)
	}
}

// A publish while the server is away fails instead of being buffered and
// replayed after the reconnect; the connection comes back by itself.
func TestPublishDuringDisconnectFails(t *testing.T) {
	t.Parallel()
	n := devtest.NATS(t)
	logger, logs := newLogger()
	c := connect(t, natsconn.Config{URL: n.URL()}, logger)
	if got := roundTrip(t, c.JS, "D"); got != 1 {
		t.Fatalf("messages = %d", got)
	}

	n.Shutdown()
	devtest.Eventually(t, 10*time.Second, func() error {
		if s := c.NC.Status(); s != nats.RECONNECTING {
			return fmt.Errorf("status %v", s)
		}
		return nil
	})
	if err := c.NC.Publish("D.b", []byte("lost?")); !errors.Is(err, nats.ErrReconnectBufExceeded) {
		t.Fatalf("core publish while disconnected: %v, want ErrReconnectBufExceeded", err)
	}
	if _, err := c.JS.PublishAsync("D.c", []byte("lost?")); err == nil {
		t.Fatal("async publish while disconnected succeeded")
	}

	if err := n.Restart(ctx(t)); err != nil {
		t.Fatal(err)
	}
	devtest.Eventually(t, 10*time.Second, func() error {
		if !c.NC.IsConnected() {
			return errors.New("not reconnected")
		}
		return nil
	})
	if got := roundTrip(t, c.JS, "D"); got != 2 {
		t.Fatalf("messages = %d, want 2 (nothing replayed)", got)
	}
	for _, s := range []string{"NATS disconnected, reconnecting", "NATS reconnected"} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("logs lack %q:\n%s", s, logs)
		}
	}
}
