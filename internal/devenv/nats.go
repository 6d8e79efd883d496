package devenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATSOptions configure an embedded NATS server. The zero value is usable:
// a random loopback port and a temporary JetStream directory are chosen.
type NATSOptions struct {
	// Dir is the JetStream store directory. Required for data to survive a
	// restart of the process; a restart of the same *NATS value always keeps it.
	Dir string
	// Host defaults to 127.0.0.1.
	Host string
	// Port defaults to a free port chosen at start.
	Port int
	// MaxPayload in bytes; zero keeps the server default (1 MiB).
	MaxPayload int32
	// NoSync turns off fsync after every write. Syncing is on by default
	// because the default interval (2 minutes) loses acknowledged messages on
	// a host crash.
	NoSync bool
	// ServerName defaults to "jetproj-embedded".
	ServerName string
}

// NATS is an embedded NATS server with JetStream enabled.
type NATS struct {
	opts   NATSOptions
	srv    *server.Server
	ownDir bool
}

// StartNATS starts an embedded NATS server and waits until it accepts
// connections and JetStream is ready.
func StartNATS(ctx context.Context, opts NATSOptions) (*NATS, error) {
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.ServerName == "" {
		opts.ServerName = "jetproj-embedded"
	}
	if opts.Port == 0 {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		opts.Port = p
	}
	n := &NATS{opts: opts}
	if opts.Dir == "" {
		dir, err := os.MkdirTemp("", "jetproj-nats-")
		if err != nil {
			return nil, fmt.Errorf("devenv: nats store dir: %w", err)
		}
		n.opts.Dir, n.ownDir = dir, true
	}
	if err := n.start(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *NATS) start(ctx context.Context) error {
	so := &server.Options{
		ServerName: n.opts.ServerName,
		Host:       n.opts.Host,
		Port:       n.opts.Port,
		JetStream:  true,
		StoreDir:   n.opts.Dir,
		SyncAlways: !n.opts.NoSync,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: n.opts.MaxPayload,
	}
	srv, err := server.NewServer(so)
	if err != nil {
		return fmt.Errorf("devenv: new nats server: %w", err)
	}
	srv.Start()
	deadline := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		deadline = time.Until(dl)
	}
	if !srv.ReadyForConnections(deadline) {
		srv.Shutdown()
		return errors.New("devenv: embedded nats server not ready in time")
	}
	n.srv = srv
	return nil
}

// URL is the client URL of the server.
func (n *NATS) URL() string {
	return "nats://" + net.JoinHostPort(n.opts.Host, strconv.Itoa(n.opts.Port))
}

// Dir is the JetStream store directory.
func (n *NATS) Dir() string { return n.opts.Dir }

// Server gives access to the underlying server (for tests).
func (n *NATS) Server() *server.Server { return n.srv }

// Shutdown stops the server and waits for it to exit. Safe to call twice.
func (n *NATS) Shutdown() {
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// Close shuts the server down and removes its store directory when StartNATS
// created it.
func (n *NATS) Close() {
	n.Shutdown()
	if n.ownDir {
		_ = os.RemoveAll(n.opts.Dir)
	}
}

// Restart stops the server and starts it again on the same port and store
// directory, as a crash-free restart of a NATS node would.
func (n *NATS) Restart(ctx context.Context) error {
	n.Shutdown()
	return n.start(ctx)
}

// FreePort asks the kernel for a free TCP port on the loopback interface.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("devenv: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
