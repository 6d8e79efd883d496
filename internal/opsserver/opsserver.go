// Package opsserver serves what an orchestrator and a monitoring system ask a
// jetproj service: Prometheus metrics on /metrics, liveness on /healthz and
// readiness on /readyz, each computed from the service's real state by the
// checks the service registers.
package opsserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"

	"github.com/jetproj/jetproj/internal/config"
)

// The paths every service serves; probes and scrape configurations use them.
const (
	MetricsPath = "/metrics"
	HealthPath  = "/healthz"
	ReadyPath   = "/readyz"
	// DefaultPort is the port of the default OPS_ADDR.
	DefaultPort = 8080
)

// Config is the operations endpoint of a service.
type Config struct {
	Addr string `env:"OPS_ADDR" envDefault:":8080" doc:"Listen address of the operations endpoint: /metrics (Prometheus), /healthz (liveness) and /readyz (readiness). off: no endpoint. Several services on one host each need their own port (127.0.0.1:0 picks a free one)."`
	// WedgedAfter is how long the run loop may work on one step before
	// /healthz reports it wedged.
	WedgedAfter time.Duration `env:"OPS_WEDGED_AFTER" envDefault:"2m" doc:"/healthz answers 503 (and the orchestrator restarts the service) when its run loop has been busy with one step (a batch, a poll, a publish) for longer. Waiting for work or for a lease is not busy. At least 1s."`
}

// Validate reports every problem of c.
func (c Config) Validate() []string {
	var p []string
	if c.WedgedAfter < time.Second {
		p = append(p, fmt.Sprintf("OPS_WEDGED_AFTER: %v: want at least 1s", c.WedgedAfter))
	}
	return p
}

// Check reports a problem with the service, or nil when all is well. Its
// error's message is shown on the endpoint only when it is a PublicError
// (see Public); otherwise the endpoint says "failing" and the service logs
// the error.
type Check func(ctx context.Context) error

// Limits bound what the endpoint's clients may cost the service. The
// endpoint is for probes and a metrics scraper on a private network (see
// docs/operations.md); these limits keep a misbehaving or hostile client
// from holding connections, goroutines or the database pool.
type Limits struct {
	// MaxConns is how many connections are served at once; further ones
	// wait in the kernel's accept queue until one ends.
	MaxConns int
	// ReadHeaderTimeout, ReadTimeout, WriteTimeout and IdleTimeout are the
	// http.Server's: a client that sends its request slowly, reads the
	// answer slowly, or keeps an idle connection open is disconnected.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	// MaxHeaderBytes bounds a request's header.
	MaxHeaderBytes int
	// CheckTTL is how long a check's result is reused (DefaultCheckTTL);
	// 0 runs every check on every request.
	CheckTTL time.Duration
}

// DefaultLimits are the limits of every service's endpoint.
var DefaultLimits = Limits{
	MaxConns:          32,
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      15 * time.Second,
	IdleTimeout:       30 * time.Second,
	MaxHeaderBytes:    8 << 10,
	CheckTTL:          DefaultCheckTTL,
}

// Option changes a Server.
type Option func(*Server)

// WithLimits replaces DefaultLimits (tests use short ones).
func WithLimits(l Limits) Option { return func(s *Server) { s.limits = l } }

// Server is the operations HTTP server of one service.
type Server struct {
	cfg    Config
	gather prometheus.Gatherer
	log    *slog.Logger
	limits Limits

	mu      sync.Mutex
	live    map[string]Check
	ready   map[string]Check
	reports map[string]func() string
	logged  map[string]string // the private error last logged per check
	mounts  map[string]http.Handler
	ln      net.Listener
}

// New returns a server exposing gather's metrics. Register checks with Live
// and Ready, then Run it.
func New(cfg Config, gather prometheus.Gatherer, log *slog.Logger, opts ...Option) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, gather: gather, log: log, limits: DefaultLimits,
		live: map[string]Check{}, ready: map[string]Check{}, reports: map[string]func() string{}, logged: map[string]string{},
		mounts: map[string]http.Handler{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Mount serves h on pattern (an http.ServeMux pattern) beside the three
// paths, e.g. the status page on "/".
func (s *Server) Mount(pattern string, h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mounts[pattern] = h
}

// Live adds a liveness check: when it fails, /healthz answers 503 and the
// orchestrator restarts the process. Its result is reused for CheckTTL.
func (s *Server) Live(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live[name] = cachedCheck(s.limits.CheckTTL, c)
}

// Report adds a line "name: <what fn returns>" to /readyz's answer, which
// does not change its status: state worth seeing beside the checks, such as
// whether a ready feeder is the active one or a standby.
func (s *Server) Report(name string, fn func() string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reports[name] = fn
}

// Ready adds a readiness check: when it fails, /readyz answers 503. Its
// result is reused for CheckTTL, so that probes cost one run (one
// PostgreSQL ping …) per interval however many arrive.
func (s *Server) Ready(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready[name] = cachedCheck(s.limits.CheckTTL, c)
}

// Wedged adds the liveness check "loop": it fails when since reports a step
// of the run loop busy for longer than OPS_WEDGED_AFTER (see NotWedged).
func (s *Server) Wedged(since func() (what string, started time.Time)) {
	after := s.cfg.WedgedAfter
	if after <= 0 { // a Config built without it: OPS_WEDGED_AFTER's default
		after = config.Defaults[Config]().WedgedAfter
	}
	s.Live("loop", NotWedged(after, since))
}

// Handler serves the three paths.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	if s.gather != nil {
		mux.Handle("GET "+MetricsPath, promhttp.HandlerFor(s.gather, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET "+HealthPath, func(w http.ResponseWriter, r *http.Request) { s.serveChecks(w, r, s.live, nil) })
	mux.HandleFunc("GET "+ReadyPath, func(w http.ResponseWriter, r *http.Request) { s.serveChecks(w, r, s.ready, s.reports) })
	s.mu.Lock()
	for p, h := range s.mounts {
		mux.Handle(p, h)
	}
	s.mu.Unlock()
	return mux
}

func (s *Server) serveChecks(w http.ResponseWriter, r *http.Request, checks map[string]Check, reports map[string]func() string) {
	s.mu.Lock()
	names := make([]string, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	cs := make([]Check, len(names))
	sort.Strings(names)
	for i, n := range names {
		cs[i] = checks[n]
	}
	rnames := make([]string, 0, len(reports))
	for n := range reports {
		rnames = append(rnames, n)
	}
	sort.Strings(rnames)
	rs := make([]func() string, len(rnames))
	for i, n := range rnames {
		rs[i] = reports[n]
	}
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
	defer cancel()
	var b strings.Builder
	failed := false
	for i, c := range cs {
		err := c(ctx)
		s.logPrivate(r.URL.Path, names[i], err)
		if err != nil {
			failed = true
			fmt.Fprintf(&b, "%s: %s\n", names[i], oneLine(shownMessage(err)))
		} else {
			fmt.Fprintf(&b, "%s: ok\n", names[i])
		}
	}
	for i, fn := range rs {
		fmt.Fprintf(&b, "%s: %s\n", rnames[i], fn())
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if failed {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write([]byte(b.String()))
}

// logPrivate logs the error of a check that the endpoint does not show,
// once per change: probes every second would otherwise repeat it.
func (s *Server) logPrivate(path, name string, err error) {
	var pe *PublicError
	key := path + " " + name
	msg := ""
	if err != nil && !errors.As(err, &pe) {
		msg = err.Error()
	}
	s.mu.Lock()
	last := s.logged[key]
	s.logged[key] = msg
	s.mu.Unlock()
	switch {
	case msg == last:
	case msg != "":
		s.log.Warn("operations endpoint: check failing", "path", path, "check", name, "error", err)
	default:
		s.log.Info("operations endpoint: check ok again", "path", path, "check", name)
	}
}

// oneLine keeps an answer line on one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Disabled is the OPS_ADDR value that serves no endpoint.
const Disabled = "off"

// enabled reports whether an endpoint is served.
func (c Config) enabled() bool { return c.Addr != "" && c.Addr != Disabled }

// Listen opens the listener, so that a bad address fails at start. It is a
// no-op when the endpoint is disabled, and when already listening.
func (s *Server) Listen() error {
	if !s.cfg.enabled() || s.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("opsserver: OPS_ADDR %q: %w", s.cfg.Addr, err)
	}
	if s.limits.MaxConns > 0 {
		ln = netutil.LimitListener(ln, s.limits.MaxConns)
	}
	s.ln = ln
	return nil
}

// Addr is the address listened on, once Listen returned; empty otherwise.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Run serves until ctx is cancelled (calling Listen first if needed).
func (s *Server) Run(ctx context.Context) error {
	if !s.cfg.enabled() {
		<-ctx.Done()
		return nil
	}
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	srv := &http.Server{Handler: s.Handler(),
		ReadHeaderTimeout: s.limits.ReadHeaderTimeout,
		ReadTimeout:       s.limits.ReadTimeout,
		WriteTimeout:      s.limits.WriteTimeout,
		IdleTimeout:       s.limits.IdleTimeout,
		MaxHeaderBytes:    s.limits.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.ln) }()
	s.log.Info("operations endpoint listening", "addr", s.Addr())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	<-errc
	return nil
}

// NewRegistry returns a registry holding the Go runtime and process
// collectors, for a service to register its own metrics in.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Serve runs fn with the endpoint beside it: the endpoint listens first, so
// that an address that cannot be bound fails before fn starts, and serves
// until fn returns. /healthz reports the service alive while fn runs. It
// returns fn's error.
func (s *Server) Serve(ctx context.Context, fn func(ctx context.Context) error) error {
	if err := s.Listen(); err != nil {
		return err
	}
	s.Live("running", func(context.Context) error { return nil })
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(sctx) }()
	err := fn(ctx)
	stop()
	if serr := <-done; err == nil && serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = serr
	}
	return err
}

// Probe asks the endpoint of cfg for path and returns nil when it answers
// 200. It is the body of `<service> healthcheck`, the container health
// check of images that have no shell or HTTP client.
func Probe(ctx context.Context, cfg Config, path string) error {
	if !cfg.enabled() {
		return errors.New("opsserver: OPS_ADDR is off: nothing to probe")
	}
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return fmt.Errorf("opsserver: OPS_ADDR %q: %w", cfg.Addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s\n%s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// HealthcheckCommand runs `<service> healthcheck`: it reads OPS_ADDR from
// environ (the process environment when nil), probes /readyz and returns
// the exit code, 0 when ready.
func HealthcheckCommand(ctx context.Context, environ map[string]string, stderr io.Writer) int {
	var opts []config.Option
	if environ != nil {
		opts = append(opts, config.WithEnvironment(environ))
	}
	cfg, err := config.Load[Config](opts...)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := Probe(ctx, cfg, ReadyPath); err != nil {
		fmt.Fprintln(stderr, "not ready:", err)
		return 1
	}
	return 0
}
