// Package natsconn connects jetproj services to NATS JetStream from a Config
// read from the environment (NATS_URL, NATS_CREDS …), or starts an embedded
// server with JetStream when NATS_URL is empty, so that the demo runs as a
// single binary with nothing installed.
//
// Connections reconnect forever, but never buffer publishes while
// disconnected: a publish during an outage fails at once instead of being
// replayed later, behind messages published after it. The feeder relies on
// this: what the stream holds is always an exact prefix of what it sent.
//
// Passwords, tokens and the user info of URLs never appear in the errors and
// logs of this package; Config.Redacted, String and LogValue hide them too.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/jsretry"
)

// Connection behaviour. Reconnects never stop; the jitter spreads the
// reconnects of many replicas after a server restart.
const (
	ReconnectWait         = 250 * time.Millisecond
	ReconnectJitter       = 100 * time.Millisecond
	ReconnectJitterTLS    = time.Second
	DrainTimeout          = 10 * time.Second
	PingInterval          = 20 * time.Second
	MaxPingsOutstanding   = 3
	defaultConnectTimeout = nats.DefaultTimeout
)

// Log keys.
const (
	logKeyURL     = "url"
	logKeyDir     = "dir"
	logKeyError   = "error"
	logKeySubject = "subject"
	logKeyName    = "name"
)

// Conn is a connection to NATS with its JetStream context, and the embedded
// server it runs on when Config.URL was empty.
type Conn struct {
	// NC is the core NATS connection.
	NC *nats.Conn
	// JS is the JetStream API of NC.
	JS jetstream.JetStream
	// Embedded is the server started by Connect, nil when Config.URL was set.
	Embedded *devenv.NATS

	logger    *slog.Logger
	closed    chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex
	closing bool  // Close was called
	lost    error // why the connection closed without Close; nil otherwise
}

// Connect validates cfg, starts an embedded server when cfg.URL is empty, and
// connects to the server. It fails fast: there is no retry at start, and the
// error names the server URL (without credentials). It also fails when the
// account has no JetStream. ctx bounds the start of the embedded server, the
// connection and the JetStream check, not the life of the connection.
//
// A JetStream that does not answer yet (a cluster electing its leaders, a
// node restarting) is waited for with ctx's jsretry.Retrier while ctx
// lasts; the first answer that is not transient decides.
//
// Lifecycle events (disconnect, reconnect, asynchronous errors, lame duck
// mode) are logged to logger; nil discards them. Close the Conn when done.
func Connect(ctx context.Context, cfg Config, logger *slog.Logger) (*Conn, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if problems := cfg.Validate(); len(problems) > 0 {
		return nil, fmt.Errorf("natsconn: %w", &config.Error{Problems: problems})
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("natsconn: connect: %w", err)
	}
	if cfg.Name == "" {
		cfg.Name = filepath.Base(os.Args[0])
	}
	c := &Conn{logger: logger, closed: make(chan struct{})}

	url := cfg.URL
	if cfg.Embedded() {
		n, err := startEmbedded(ctx, cfg)
		if err != nil {
			return nil, err
		}
		c.Embedded, url = n, n.URL()
		logger.Info("embedded NATS server started", logKeyURL, url, logKeyDir, n.Dir())
	}

	opts, err := c.options(ctx, cfg)
	if err != nil {
		c.shutdownEmbedded()
		return nil, err
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		c.shutdownEmbedded()
		return nil, cfg.errorf(err, "natsconn: connect to %s: %v", redactURL(url), err)
	}
	c.NC = nc
	js, err := jetstream.New(nc)
	if err == nil {
		err = jsretry.Do(ctx, "JetStream account info", func(ctx context.Context) error {
			_, err := js.AccountInfo(ctx)
			return err
		})
	}
	if err != nil {
		c.Close()
		return nil, cfg.errorf(err, "natsconn: JetStream at %s: %v", redactURL(url), err)
	}
	c.JS = js
	logger.Info("connected to NATS", logKeyURL, redactURL(nc.ConnectedUrl()), logKeyName, cfg.Name)
	return c, nil
}

func startEmbedded(ctx context.Context, cfg Config) (*devenv.NATS, error) {
	if cfg.EmbeddedPort != 0 {
		// A busy port would only show as a start timeout.
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.EmbeddedPort)))
		if err != nil {
			return nil, fmt.Errorf("%w: NATS_EMBEDDED_PORT %d: %v (set NATS_URL to use the server there, or NATS_EMBEDDED_PORT=0 for a random port)",
				ErrEmbeddedPortInUse, cfg.EmbeddedPort, err)
		}
		l.Close()
	}
	if cfg.EmbeddedDir != "" {
		if err := os.MkdirAll(cfg.EmbeddedDir, 0o755); err != nil {
			return nil, fmt.Errorf("natsconn: NATS_EMBEDDED_DIR: %w", err)
		}
	}
	n, err := devenv.StartNATS(ctx, devenv.NATSOptions{
		Dir:        cfg.EmbeddedDir,
		Port:       cfg.EmbeddedPort,
		MaxPayload: cfg.EmbeddedMaxPayload,
	})
	if err != nil {
		return nil, fmt.Errorf("natsconn: start embedded server: %w", err)
	}
	return n, nil
}

func (c *Conn) options(ctx context.Context, cfg Config) ([]nats.Option, error) {
	timeout := defaultConnectTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(min(timeout, time.Until(dl)), time.Millisecond)
	}
	log := c.logger
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.Timeout(timeout),
		nats.RetryOnFailedConnect(false),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(ReconnectWait),
		nats.ReconnectJitter(ReconnectJitter, ReconnectJitterTLS),
		// Publishes during a disconnect fail instead of being buffered and
		// sent after the reconnect, out of order with later publishes.
		nats.ReconnectBufSize(-1),
		nats.DrainTimeout(DrainTimeout),
		nats.PingInterval(PingInterval),
		nats.MaxPingsOutstanding(MaxPingsOutstanding),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err == nil {
				log.Debug("NATS disconnected")
				return
			}
			log.Warn("NATS disconnected, reconnecting", logKeyError, cfg.scrub(err.Error()))
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS reconnected", logKeyURL, redactURL(nc.ConnectedUrl()))
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			attrs := []any{logKeyError, cfg.scrub(err.Error())}
			if sub != nil {
				attrs = append(attrs, logKeySubject, sub.Subject)
			}
			log.Error("NATS asynchronous error", attrs...)
		}),
		nats.LameDuckModeHandler(func(nc *nats.Conn) {
			log.Warn("NATS server entering lame duck mode", logKeyURL, redactURL(nc.ConnectedUrl()))
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			c.mu.Lock()
			if !c.closing {
				c.lost = ErrClosed
				if err := nc.LastError(); err != nil {
					c.lost = fmt.Errorf("%w: %s", ErrClosed, cfg.scrub(err.Error()))
				}
			}
			lost := c.lost
			c.mu.Unlock()
			if lost != nil {
				log.Error("NATS connection closed and will not reconnect; the service stops", logKeyError, lost)
			} else {
				log.Debug("NATS connection closed")
			}
			close(c.closed)
		}),
	}
	switch {
	case cfg.Creds != "":
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	case cfg.NKeySeed != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NKeySeed)
		if err != nil {
			return nil, cfg.errorf(err, "natsconn: NATS_NKEY_SEED: %v", err)
		}
		opts = append(opts, o)
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if cfg.TLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	return opts, nil
}

// Close drains the connection (subscriptions finish the messages they hold,
// pending publishes are flushed), waits until it is closed, then shuts the
// embedded server down. Safe to call more than once.
func (c *Conn) Close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.mu.Unlock()
		if c.NC != nil {
			if err := c.NC.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				c.logger.Debug("NATS drain", logKeyError, err)
			}
			t := time.NewTimer(DrainTimeout + time.Second)
			select {
			case <-c.closed:
			case <-t.C:
				c.NC.Close()
			}
			t.Stop()
		}
		c.shutdownEmbedded()
	})
}

func (c *Conn) shutdownEmbedded() {
	if c.Embedded != nil {
		c.Embedded.Close()
		c.logger.Info("embedded NATS server stopped")
	}
}

// scrubbedError carries a message without secrets and keeps the original
// error for errors.Is and errors.As.
type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// errorf formats a message, removes the secrets of c from it and wraps err.
func (c Config) errorf(err error, format string, args ...any) error {
	return &scrubbedError{msg: c.scrub(fmt.Sprintf(format, args...)), err: err}
}

// Lost is closed when the connection has closed; Err then tells whether it
// was lost (closed without Close).
func (c *Conn) Lost() <-chan struct{} { return c.closed }

// Err returns an error matching ErrClosed, with the server's last error,
// once the connection closed without Close being called; nil otherwise.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lost
}

// Alive is a liveness check (opsserver.Check): it fails once the connection
// was lost for good (Err), so that the orchestrator restarts the service.
func (c *Conn) Alive(context.Context) error { return c.Err() }

// Guard returns a context derived from ctx that is cancelled, with a cause
// matching ErrClosed, when the connection is lost for good: a service runs
// under it and ends instead of waiting forever on a dead connection. Call
// stop to release the watch.
func (c *Conn) Guard(ctx context.Context) (gctx context.Context, stop func()) {
	gctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		select {
		case <-c.closed:
			if err := c.Err(); err != nil {
				cancel(err)
			}
		case <-gctx.Done():
		case <-done:
		}
	}()
	var once sync.Once
	return gctx, func() {
		once.Do(func() { close(done) })
		cancel(nil)
	}
}

// ClusterSize is how many servers the connection knows of (configured and
// discovered through the cluster's gossip) when the server it is connected
// to belongs to a cluster; 1 otherwise.
func (c *Conn) ClusterSize() int {
	if c.NC == nil || c.NC.ConnectedClusterName() == "" {
		return 1
	}
	return max(len(c.NC.Servers()), 1)
}

// WarnSingleReplica logs a warning when the servers form a cluster of three
// or more and replicas is 1: the streams and buckets named in what are then
// created with one replica, on one node, and stop whenever that node
// restarts. variable names the setting that chooses the replicas. It
// reports whether it warned; the service still does what it is told.
func (c *Conn) WarnSingleReplica(replicas int, variable string, what ...string) bool {
	n := c.ClusterSize()
	if n < 3 || replicas > 1 {
		return false
	}
	c.logger.Warn("creating single-replica (R1) streams and buckets on a NATS cluster: each lives on one node and stops while that node restarts; set "+variable+"=3",
		"cluster_servers", n, "variable", variable, "replicas", max(replicas, 1), "streams_and_buckets", strings.Join(what, ","))
	return true
}

// Connected returns a readiness check that fails while nc is not connected
// (reconnecting, or closed).
func Connected(nc *nats.Conn) func(context.Context) error {
	return func(context.Context) error {
		if s := nc.Status(); s != nats.CONNECTED {
			return fmt.Errorf("nats: %s", s)
		}
		return nil
	}
}
