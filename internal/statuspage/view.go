package statuspage

import (
	"cmp"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/jetproj/jetproj/internal/feeder"
)

// View is the whole system as the page shows it: GET /status.json.
type View struct {
	Now      time.Time `json:"now"`
	Service  string    `json:"service"`
	Instance string    `json:"instance"`
	// Admin is set when this page offers actions.
	Admin bool `json:"admin"`
	// IntervalMS is how often the services publish and the page samples.
	IntervalMS  int64            `json:"interval_ms"`
	Feeders     []FeederView     `json:"feeders"`
	Projections []ProjectionView `json:"projections"`
	Replicas    []ReplicaSnap    `json:"replicas"`
	Emitters    []EmitterView    `json:"emitters"`
	Actions     []ActionRecord   `json:"actions"`
	// History holds the samples after the one asked for (?since=, unix
	// milliseconds), at most the last hour.
	History []Sample `json:"history"`
	Errors  []string `json:"errors,omitempty"`
}

// FeederView is one feeder (by name): its active instance and standbys.
type FeederView struct {
	Name     string   `json:"name"`
	Stream   string   `json:"stream"`
	Active   string   `json:"active"`
	Standbys []string `json:"standbys"`
	State    string   `json:"state"`
	// Position: the store position of the last event published; StoreHead:
	// the store's last; Lag: the difference.
	Position  int64 `json:"position"`
	StoreHead int64 `json:"store_head"`
	Lag       int64 `json:"lag"`
	// Stalled names the oversized event the feeder stopped at.
	Stalled *feeder.Oversized `json:"stalled_at,omitempty"`
	Error   string            `json:"error,omitempty"`
	// Report is what `feeder status --json` prints.
	Report *feeder.Report `json:"report,omitempty"`
	// Rate is events published per second (the last sample).
	Rate float64 `json:"rate"`
}

// EmitterView is one emitter (by name).
type EmitterView struct {
	Name            string           `json:"name"`
	Active          string           `json:"active"`
	Standbys        []string         `json:"standbys"`
	Backlog         int64            `json:"backlog"`
	Stalled         int              `json:"stalled"`
	StalledSubjects []StalledSubject `json:"stalled_subjects,omitempty"`
	Rate            float64          `json:"rate"`
}

// ProjectionView is a projection's status (the fields of `projector status
// --json`), its registry details and what the samples tell.
type ProjectionView struct {
	ProjectionSnap
	// Rate is messages handled per second across the replicas.
	Rate float64 `json:"rate"`
	// Rebuilding: replaying after a reset or rebuild, Progress of it in
	// [0,1].
	Rebuilding bool    `json:"rebuilding"`
	Progress   float64 `json:"progress"`
	// ETASeconds is how long catching up takes at Rate; -1 when unknown,
	// 0 when caught up.
	ETASeconds float64 `json:"eta_seconds"`
}

// Stage names in samples' rates.
const (
	StageFeeder  = "feeder"
	StageEmitter = "emitter"
	// StageProjector prefixes a projection's name.
	StageProjector = "projector/"
)

// Sample is one moment of the system.
type Sample struct {
	T int64 `json:"t"` // unix milliseconds
	// Lag by projection.
	Lag map[string]uint64 `json:"lag"`
	// Rate by stage (feeder, emitter, projector/<name>), per second.
	Rate map[string]float64 `json:"rate"`
}

// snapshots are the bucket's entries decoded.
type snapshots struct {
	feeders     []FeederSnap
	emitters    []EmitterSnap
	replicas    []ReplicaSnap
	projections []ProjectionSnap
	errs        []string
}

func decode(entries map[string]entry) snapshots {
	var s snapshots
	for k, e := range entries {
		kind, _, _ := strings.Cut(k, ".")
		var err error
		switch kind {
		case "feeder":
			var v FeederSnap
			if err = json.Unmarshal(e.value, &v); err == nil {
				s.feeders = append(s.feeders, v)
			}
		case "emitter":
			var v EmitterSnap
			if err = json.Unmarshal(e.value, &v); err == nil {
				s.emitters = append(s.emitters, v)
			}
		case "projector":
			var v ReplicaSnap
			if err = json.Unmarshal(e.value, &v); err == nil {
				s.replicas = append(s.replicas, v)
			}
		case "projection":
			var v ProjectionSnap
			if err = json.Unmarshal(e.value, &v); err == nil {
				s.projections = append(s.projections, v)
			}
		}
		if err != nil {
			s.errs = append(s.errs, k+": "+err.Error())
		}
	}
	slices.SortFunc(s.feeders, func(a, b FeederSnap) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Instance, b.Instance))
	})
	slices.SortFunc(s.emitters, func(a, b EmitterSnap) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Instance, b.Instance))
	})
	slices.SortFunc(s.replicas, func(a, b ReplicaSnap) int { return cmp.Compare(a.Replica, b.Replica) })
	slices.SortFunc(s.projections, func(a, b ProjectionSnap) int { return cmp.Compare(a.Name, b.Name) })
	return s
}

// build assembles the view from the snapshots and the last sample.
func build(s snapshots, last *Sample) View {
	rate := func(stage string) float64 {
		if last == nil {
			return 0
		}
		return last.Rate[stage]
	}
	v := View{Feeders: []FeederView{}, Projections: []ProjectionView{}, Replicas: s.replicas, Emitters: []EmitterView{},
		Actions: []ActionRecord{}, Errors: s.errs}
	if v.Replicas == nil {
		v.Replicas = []ReplicaSnap{}
	}
	for _, f := range s.feeders {
		i := slices.IndexFunc(v.Feeders, func(x FeederView) bool { return x.Name == f.Name })
		if i < 0 {
			v.Feeders = append(v.Feeders, FeederView{Name: f.Name, Stream: f.Stream, Standbys: []string{}, State: "standby", Rate: rate(StageFeeder)})
			i = len(v.Feeders) - 1
		}
		fv := &v.Feeders[i]
		if !f.Active {
			fv.Standbys = append(fv.Standbys, f.Instance)
			continue
		}
		fv.Active, fv.State, fv.Position, fv.StoreHead, fv.Lag, fv.Report = f.Instance, f.State, f.Position, f.StoreHead, f.Lag, f.Report
		if f.Report != nil && f.Report.Status != nil {
			fv.Stalled, fv.Error = f.Report.Status.Stalled, f.Report.Status.Error
		}
	}
	for _, e := range s.emitters {
		i := slices.IndexFunc(v.Emitters, func(x EmitterView) bool { return x.Name == e.Name })
		if i < 0 {
			v.Emitters = append(v.Emitters, EmitterView{Name: e.Name, Standbys: []string{}, Rate: rate(StageEmitter)})
			i = len(v.Emitters) - 1
		}
		ev := &v.Emitters[i]
		if !e.Active {
			ev.Standbys = append(ev.Standbys, e.Instance)
			continue
		}
		ev.Active, ev.Backlog, ev.Stalled, ev.StalledSubjects = e.Instance, e.Backlog, e.Stalled, e.StalledSubjects
	}
	for _, p := range s.projections {
		pv := ProjectionView{ProjectionSnap: p, Rate: rate(StageProjector + p.Name), ETASeconds: -1}
		if pv.Owners == nil {
			pv.Owners = map[string]int{}
		}
		if p.ReplayUntil > p.Position && p.State == "active" {
			pv.Rebuilding = true
			pv.Progress = float64(p.Position) / float64(p.ReplayUntil)
		}
		switch {
		case p.Lag == 0:
			pv.ETASeconds = 0
		case pv.Rate > 0:
			pv.ETASeconds = float64(p.Lag) / pv.Rate
		}
		v.Projections = append(v.Projections, pv)
	}
	for _, r := range s.replicas {
		v.Actions = append(v.Actions, r.Actions...)
	}
	slices.SortFunc(v.Actions, func(a, b ActionRecord) int { return b.At.Compare(a.At) })
	return v
}

// history is the samples of the last hour and the counters they come from.
type history struct {
	max     int
	samples []Sample
	// prev holds each counter's last value, by stage and instance.
	prev   map[string]float64
	prevAt time.Time
}

func newHistory(interval time.Duration) *history {
	return &history{max: int(time.Hour/interval) + 1, prev: map[string]float64{}}
}

// add samples s at now: lags as they are, rates from the counters' growth
// since the last sample (a counter that went down restarted from zero).
func (h *history) add(now time.Time, s snapshots) {
	counters := map[string]float64{} // "<stage>\x00<instance>" → value
	for _, f := range s.feeders {
		counters[StageFeeder+"\x00"+f.Name+"/"+f.Instance] = f.Published
	}
	for _, e := range s.emitters {
		counters[StageEmitter+"\x00"+e.Name+"/"+e.Instance] = e.Emitted
	}
	for _, r := range s.replicas {
		for name, n := range r.Messages {
			counters[StageProjector+name+"\x00"+r.Replica] = n
		}
	}
	smp := Sample{T: now.UnixMilli(), Lag: map[string]uint64{}, Rate: map[string]float64{StageFeeder: 0, StageEmitter: 0}}
	for _, p := range s.projections {
		smp.Lag[p.Name] = p.Lag
		smp.Rate[StageProjector+p.Name] = 0
	}
	dt := now.Sub(h.prevAt).Seconds()
	for k, v := range counters {
		stage, _, _ := strings.Cut(k, "\x00")
		prev, seen := h.prev[k]
		if !seen || h.prevAt.IsZero() || dt <= 0 {
			continue
		}
		d := v - prev
		if d < 0 {
			d = v
		}
		smp.Rate[stage] += d / dt
	}
	h.prev, h.prevAt = counters, now
	h.samples = append(h.samples, smp)
	if len(h.samples) > h.max {
		h.samples = slices.Delete(h.samples, 0, len(h.samples)-h.max)
	}
}

// since returns the samples after t (unix milliseconds).
func (h *history) since(t int64) []Sample {
	i, _ := slices.BinarySearchFunc(h.samples, t+1, func(s Sample, t int64) int { return cmp.Compare(s.T, t) })
	return slices.Clone(h.samples[i:])
}

func (h *history) last() *Sample {
	if len(h.samples) == 0 {
		return nil
	}
	s := h.samples[len(h.samples)-1]
	return &s
}
