// Package statuspage is the status page every jetproj service serves on its
// operations address ("/", beside /metrics): the whole system — feeders,
// projections, emitters — read from NATS, so that any replica shows the same
// picture, with an hour of lag and throughput kept in memory, and guarded
// actions (retry, skip, start, live) on projector replicas.
//
// Each service publishes what only it knows to the KV bucket jetproj_status
// every OPS_STATUS_INTERVAL: a feeder its state, position and the store's
// head; an emitter its outbox backlog and stalled subjects; a projector
// replica its counters, and the status of the projections whose slot 0 it
// owns, read as `projector status` reads it. The page reads the bucket on
// each request of /status.json, which the browser polls; the charts come
// from samples of the same bucket taken by the serving process (a fresh
// replica starts with empty charts).
package statuspage

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/pkg/contract"
)

//go:embed assets
var assets embed.FS

// Action is one action asked for on the page.
type Action struct {
	// Op is retry, skip, start or live.
	Op         string `json:"op"`
	Projection string `json:"projection"`
	// Partition, for retry and skip (e.g. wallet/w-1, or global).
	Partition string `json:"partition,omitempty"`
	// Live, for live: on or off.
	Live string `json:"live,omitempty"`
}

// Actions does what the page asks: the projector service implements it.
type Actions interface {
	// Do performs a and returns what happened, in a sentence.
	Do(ctx context.Context, a Action) (string, error)
}

// Collector returns the entries a service publishes, by key (see Key).
type Collector func(ctx context.Context) (map[string]any, error)

// Options build a Page.
type Options struct {
	Config Config
	JS     jetstream.JetStream
	// Service and Instance name who serves the page.
	Service, Instance string
	// Replicas of the bucket when this service creates it.
	Replicas int
	Logger   *slog.Logger
	// Actions, when not nil and OPS_ADMIN=on, are offered on the page.
	Actions Actions
}

// Page serves the status page and publishes this service's status.
type Page struct {
	o      Options
	log    *slog.Logger
	board  *board
	tokens Tokens

	mu         sync.Mutex
	collectors []Collector
	hist       *history
	done       []ActionRecord // this process's actions, newest last
}

// maxActions is how many of its actions a process keeps and publishes.
const maxActions = 50

// New returns a page; it reads the token file when actions are on.
func New(o Options) (*Page, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Config.Interval <= 0 { // a Config built without it: OPS_STATUS_INTERVAL's default
		o.Config.Interval = config.Defaults[Config]().Interval
	}
	p := &Page{o: o, log: o.Logger.With("component", "statuspage"),
		board: newBoard(o.JS, o.Replicas, o.Config.Interval, o.Logger.With("component", "statuspage")), hist: newHistory(o.Config.Interval)}
	if o.Config.AdminOn() {
		t, err := ReadTokens(o.Config.AdminTokenFile)
		if err != nil {
			return nil, fmt.Errorf("statuspage: OPS_ADMIN_TOKEN_FILE: %w", err)
		}
		p.tokens = t
	}
	return p, nil
}

// Collect adds what this service publishes every interval.
func (p *Page) Collect(c Collector) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.collectors = append(p.collectors, c)
}

// Interval is how often Run publishes and samples.
func (p *Page) Interval() time.Duration { return p.o.Config.Interval }

// Fresh reports whether key was published within the last few intervals
// (by any service).
func (p *Page) Fresh(ctx context.Context, key string) bool {
	age, ok, err := p.board.age(ctx, key)
	return err == nil && ok && age < 3*p.o.Config.Interval
}

// ActionLog returns this process's recent actions, for its snapshot.
func (p *Page) ActionLog() []ActionRecord {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]ActionRecord(nil), p.done...)
}

// Run publishes this service's entries and samples the system every
// interval until ctx ends. Failures are logged (at debug: JetStream
// trouble is reported by the service's own readiness) and tried again at
// the next tick.
func (p *Page) Run(ctx context.Context) error {
	t := time.NewTicker(p.o.Config.Interval)
	defer t.Stop()
	for {
		p.tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *Page) tick(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, max(2*p.o.Config.Interval, 5*time.Second))
	defer cancel()
	p.mu.Lock()
	cs := append([]Collector(nil), p.collectors...)
	p.mu.Unlock()
	for _, c := range cs {
		entries, err := c(ctx)
		if err != nil && ctx.Err() == nil {
			p.log.Debug("status not collected", "error", err)
		}
		for k, v := range entries {
			b, err := json.Marshal(v)
			if err == nil {
				err = p.board.put(ctx, k, b)
			}
			if err != nil && ctx.Err() == nil {
				p.log.Debug("status not published", "key", k, "error", err)
			}
		}
	}
	entries, err := p.board.readAll(ctx)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Debug("status not read", "error", err)
		}
		return
	}
	s := decode(entries)
	p.mu.Lock()
	p.hist.add(time.Now(), s)
	p.mu.Unlock()
}

// Beside returns fn run with the page's Run beside it: Run stops when fn
// returns, and fn's error is returned.
func (p *Page) Beside(fn func(ctx context.Context) error) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		rctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = p.Run(rctx)
		}()
		err := fn(ctx)
		stop()
		<-done
		return err
	}
}

// View reads the system now; history holds the samples after since (unix
// milliseconds).
func (p *Page) View(ctx context.Context, since int64) View {
	entries, err := p.board.readAll(ctx)
	s := decode(entries)
	if err != nil {
		s.errs = append(s.errs, "reading "+contract.StatusBucket+": "+err.Error())
	}
	p.mu.Lock()
	v := build(s, p.hist.last())
	v.History = p.hist.since(since)
	p.mu.Unlock()
	v.Now, v.Service, v.Instance = time.Now().UTC(), p.o.Service, p.o.Instance
	v.Admin = p.adminOn()
	v.IntervalMS = p.o.Config.Interval.Milliseconds()
	return v
}

func (p *Page) adminOn() bool { return p.o.Config.AdminOn() && p.o.Actions != nil }

// Paths the page serves.
const (
	StatusPath  = "/status.json"
	ActionsPath = "/actions"
)

// Handler serves "/" (the page), /assets/, /status.json and POST /actions.
func (p *Page) Handler() http.Handler {
	static, _ := fs.Sub(assets, "assets")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		b, _ := assets.ReadFile("assets/index.html")
		secure(w)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(b)
	})
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(static)))
	mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, r *http.Request) {
		since, _ := strconv.ParseInt(r.URL.Query().Get("since"), 10, 64)
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		v := p.View(ctx, since)
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("POST "+ActionsPath, p.serveAction)
	return mux
}

// secure sets the headers of the page: its own scripts and styles only.
func secure(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

type actionReply struct {
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

func (p *Page) serveAction(w http.ResponseWriter, r *http.Request) {
	if !p.o.Config.AdminOn() {
		writeJSON(w, http.StatusForbidden, actionReply{Error: "actions are off on this service (OPS_ADMIN=off)"})
		return
	}
	if p.o.Actions == nil {
		writeJSON(w, http.StatusForbidden, actionReply{Error: "this service runs no projections: use a projector replica's page"})
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	who, known := p.tokens.Who(strings.TrimSpace(token))
	if !ok || !known {
		p.log.Warn("admin action refused: unknown token", "remote", r.RemoteAddr)
		writeJSON(w, http.StatusUnauthorized, actionReply{Error: "unknown token"})
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		writeJSON(w, http.StatusUnsupportedMediaType, actionReply{Error: "want application/json"})
		return
	}
	var a Action
	dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		writeJSON(w, http.StatusBadRequest, actionReply{Error: "bad request: " + err.Error()})
		return
	}
	if err := a.check(); err != nil {
		writeJSON(w, http.StatusBadRequest, actionReply{Error: err.Error()})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 40*time.Second)
	defer cancel()
	msg, err := p.o.Actions.Do(ctx, a)
	rec := ActionRecord{At: time.Now().UTC(), Who: who, Instance: p.o.Instance, Op: a.Op, Projection: a.Projection, Partition: a.Partition, Result: msg}
	if a.Op == "live" {
		rec.Op = "live " + a.Live
	}
	log := p.log.With("who", who, "op", rec.Op, "projection", a.Projection, "partition", a.Partition)
	if err != nil {
		rec.Result, rec.Error = "failed", err.Error()
		log.Warn("admin action failed", "error", err)
	} else {
		log.Info("admin action", "result", msg)
	}
	p.mu.Lock()
	p.done = append(p.done, rec)
	if len(p.done) > maxActions {
		p.done = p.done[len(p.done)-maxActions:]
	}
	p.mu.Unlock()
	switch {
	case errors.Is(err, ErrBadAction):
		writeJSON(w, http.StatusBadRequest, actionReply{Error: err.Error()})
	case err != nil:
		writeJSON(w, http.StatusBadGateway, actionReply{Error: err.Error()})
	default:
		writeJSON(w, http.StatusOK, actionReply{Message: msg})
	}
}

func (a Action) check() error {
	if a.Projection == "" {
		return fmt.Errorf("%w: no projection", ErrBadAction)
	}
	switch a.Op {
	case "retry", "skip":
		if a.Partition == "" {
			return fmt.Errorf("%w: %s needs a partition", ErrBadAction, a.Op)
		}
	case "start":
	case "live":
		if a.Live != "on" && a.Live != "off" {
			return fmt.Errorf("%w: live needs on or off", ErrBadAction)
		}
	default:
		return fmt.Errorf("%w: unknown op %q (retry, skip, start, live)", ErrBadAction, a.Op)
	}
	return nil
}
