package statuspage

import (
	"time"

	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/projector"
)

// What each service publishes to the bucket, under the key named beside it.
// A key expires (the bucket's TTL) when its service stops publishing.

// FeederSnap is one feeder instance: key feeder.<name>.<instance>.
type FeederSnap struct {
	Name     string `json:"name"`
	Stream   string `json:"stream"`
	Instance string `json:"instance"`
	// State is the instance's own state (standby, feeding, stopped …).
	State  string `json:"state"`
	Active bool   `json:"active"`
	// Position is the store position of the last event published, StoreHead
	// the store's last position (read by the active instance only).
	Position  int64 `json:"position"`
	StoreHead int64 `json:"store_head"`
	Lag       int64 `json:"lag"`
	// Published counts the events this instance published since it started.
	Published float64 `json:"published"`
	// Report is what `feeder status --json` prints (read by the active
	// instance).
	Report *feeder.Report `json:"report,omitempty"`
	At     time.Time      `json:"at"`
}

// EmitterSnap is one emitter instance: key emitter.<name>.<instance>.
type EmitterSnap struct {
	Name     string `json:"name"`
	Instance string `json:"instance"`
	Active   bool   `json:"active"`
	// Backlog is the rows waiting in jetproj.outbox.
	Backlog int64 `json:"backlog"`
	// Stalled is the number of subjects whose derived events JetStream
	// refuses; StalledSubjects names them (the oldest 50), with since when.
	Stalled         int              `json:"stalled"`
	StalledSubjects []StalledSubject `json:"stalled_subjects,omitempty"`
	Emitted         float64          `json:"emitted"`
	At              time.Time        `json:"at"`
}

// StalledSubject is a subject whose derived events JetStream refuses: they
// wait in the outbox of Database (empty when the emitter has one).
type StalledSubject struct {
	Subject  string    `json:"subject"`
	Database string    `json:"database,omitempty"`
	Since    time.Time `json:"since"` // the first refusal
	Error    string    `json:"error,omitempty"`
}

// ReplicaSnap is one projector replica: key projector.<replica>.
type ReplicaSnap struct {
	Replica     string   `json:"replica"`
	Projections []string `json:"projections"`
	// Messages counts, by projection, the messages this replica handled
	// since it started.
	Messages map[string]float64 `json:"messages"`
	// Slots lists, by projection, the slots this replica owns.
	Slots   map[string][]int `json:"slots,omitempty"`
	Actions []ActionRecord   `json:"actions,omitempty"`
	At      time.Time        `json:"at"`
}

// ProjectionSnap is one projection as `projector status --json` shows it,
// with what its registry entry adds: key projection.<name>. The replica that
// owns the projection's slot 0 publishes it; any replica does when nobody
// has for a while (not initialised, paused, waiting for start).
type ProjectionSnap struct {
	projector.Status
	// Reason is why it is paused (e.g. waiting for `projector start`).
	Reason string `json:"reason,omitempty"`
	// NotLive: deployed not live, it emits nothing (blue-green).
	NotLive bool `json:"not_live,omitempty"`
	// ReplayUntil is the source sequence up to which it replays after a
	// reset or rebuild, emitting nothing.
	ReplayUntil uint64    `json:"replay_until,omitempty"`
	By          string    `json:"by"`
	At          time.Time `json:"at"`
}

// ActionRecord is an action asked for on a page.
type ActionRecord struct {
	At         time.Time `json:"at"`
	Who        string    `json:"who"`
	Instance   string    `json:"instance"`
	Op         string    `json:"op"`
	Projection string    `json:"projection"`
	Partition  string    `json:"partition,omitempty"`
	Result     string    `json:"result"`
	Error      string    `json:"error,omitempty"`
}
