package projectorsvc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

func (s *service) pageCollector(page *statuspage.Page, p *projector.Projector, reg prometheus.Gatherer) statuspage.Collector {
	return PageCollector(page, s.js(), p, s.selected(nil), s.replicas(), s.cfg.Projector.Replica, reg)
}

// PageCollector publishes, for the status pages, a projector replica's
// counters and slots, and the status of every projection of defs whose slot
// 0 it owns, read as `projector status` reads it (ReadStatus); also of any
// projection of defs that nobody has published lately (not initialised,
// paused, waiting for start: no replica owns its slots). replica is the
// replica's name, reg the registry its projector registers its metrics in.
func PageCollector(page *statuspage.Page, js jetstream.JetStream, p *projector.Projector, defs []*projection.Definition,
	replicas int, replica string, reg prometheus.Gatherer) statuspage.Collector {
	return func(ctx context.Context) (map[string]any, error) {
		slots := map[string][]int{}
		for _, st := range p.Statuses() {
			slots[st.Projection] = st.Slots
		}
		var names []string
		for _, d := range defs {
			names = append(names, d.Name())
		}
		out := map[string]any{
			statuspage.Key("projector", replica): statuspage.ReplicaSnap{
				Replica: replica, Projections: names, Slots: slots,
				Messages: statuspage.Metric(reg, "jetproj_projector_messages_total", "projection"),
				Actions:  page.ActionLog(), At: time.Now().UTC(),
			},
		}
		var errs []error
		for _, d := range defs {
			key := statuspage.Key("projection", d.Name())
			if !slices.Contains(slots[d.Name()], 0) && page.Fresh(ctx, key) {
				continue
			}
			snap, err := projectionSnap(ctx, js, d, replicas, replica)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", d.Name(), err))
				continue
			}
			out[key] = snap
		}
		return out, errors.Join(errs...)
	}
}

// projectionSnap is d's status with its registry entry's details.
func projectionSnap(ctx context.Context, js jetstream.JetStream, d *projection.Definition, replicas int, replica string) (statuspage.ProjectionSnap, error) {
	st, err := ReadStatus(ctx, js, d, replicas)
	if err != nil {
		return statuspage.ProjectionSnap{}, err
	}
	snap := statuspage.ProjectionSnap{Status: st, By: replica, At: time.Now().UTC()}
	kv, err := js.KeyValue(ctx, contract.RegistryBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return snap, nil
	}
	if err != nil {
		return snap, err
	}
	e, err := kv.Get(ctx, d.Name())
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return snap, nil
	}
	if err != nil {
		return snap, err
	}
	var en projector.Entry
	if err := json.Unmarshal(e.Value(), &en); err != nil {
		return snap, err
	}
	snap.Reason, snap.NotLive, snap.ReplayUntil = en.Reason, en.NotLive, en.ReplayUntil
	return snap, nil
}

// pageActions does what an operator asks on the status page, as the
// commands of the same names do.
type pageActions struct{ s *service }

var _ statuspage.Actions = pageActions{}

func (a pageActions) Do(ctx context.Context, act statuspage.Action) (string, error) {
	if !slices.ContainsFunc(a.s.defs, func(d *projection.Definition) bool { return d.Name() == act.Projection }) {
		return "", fmt.Errorf("%w: no projection %q", statuspage.ErrBadAction, act.Projection)
	}
	// The commands report progress on stdout: keep it for the answer.
	var out bytes.Buffer
	c := *a.s
	c.stdout = &out
	var err error
	switch act.Op {
	case "retry", "skip":
		err = c.partition(ctx, act.Op, act.Projection, act.Partition)
	case "start":
		err = c.start(ctx, act.Projection)
	case "live":
		err = c.setLive(ctx, act.Projection, act.Live == "on")
	default:
		return "", fmt.Errorf("%w: unknown op %q", statuspage.ErrBadAction, act.Op)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	return lines[len(lines)-1], err
}
