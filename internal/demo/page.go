package demo

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/emittersvc"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/internal/feedersvc"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

// defaultOpsAddr is where the demo serves its status page, unless taken.
const defaultOpsAddr = "127.0.0.1:8080"

// ops is the demo's operations endpoint with the status page, and the
// page's publishing loop.
type ops struct {
	srv  *opsserver.Server
	page *statuspage.Page
}

func (o *ops) Addr() string { return o.srv.Addr() }

// Run serves the page and publishes the three services' status until ctx
// ends.
func (o *ops) Run(ctx context.Context) error {
	return o.srv.Serve(ctx, o.page.Run)
}

// statusPage builds the status page of the three services running in this
// process, listening already (on a free port when the default is taken).
func statusPage(o Options, reg *prometheus.Registry, js jetstream.JetStream, pool *pgxpool.Pool, f *feeder.Feeder,
	p *projector.Projector, defs []projection.Definer, emCfg emitter.Config, em *emitter.Emitter) (*ops, error) {
	page, err := statuspage.New(statuspage.Options{Config: statuspage.Config{Admin: "off", Interval: 2 * time.Second},
		JS: js, Service: "demo", Instance: "demo", Logger: o.Log})
	if err != nil {
		return nil, err
	}
	ds := make([]*projection.Definition, len(defs))
	for i, d := range defs {
		ds[i] = d.Def()
	}
	page.Collect(feedersvc.PageCollector(f, pool, feedersvc.Lag(f, pool), js, feeder.Config{}, reg))
	page.Collect(projectorsvc.PageCollector(page, js, p, ds, 1, "demo", reg))
	page.Collect(emittersvc.PageCollector(emCfg, []emitter.Database{{Pool: pool}}, em.Stalled, reg))
	addr := o.OpsAddr
	if addr == "" {
		addr = defaultOpsAddr
	}
	srv := opsserver.New(opsserver.Config{Addr: addr, WedgedAfter: 2 * time.Minute}, reg, o.Log)
	srv.Mount("/", page.Handler())
	if err := srv.Listen(); err != nil {
		var opErr *net.OpError
		if o.OpsAddr != "" || !errors.As(err, &opErr) {
			return nil, err
		}
		srv = opsserver.New(opsserver.Config{Addr: "127.0.0.1:0", WedgedAfter: 2 * time.Minute}, reg, o.Log)
		srv.Mount("/", page.Handler())
		if err := srv.Listen(); err != nil {
			return nil, err
		}
	}
	return &ops{srv: srv, page: page}, nil
}
