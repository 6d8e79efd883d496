// Package projectionspec is the runtime's side of a projection definition:
// what package projection records about a definition and keeps out of its
// exported API — settings, source, kind, the untyped handlers, state
// decoding, hooks. Package projection fills it; the projector, the
// services and projectiontest read it with Of.
//
//	s := projectionspec.Of(def) // def: a projection.Definer
//	pc := &projectionspec.PartitionContext{Key: key, State: s.NewState()}
//	err := s.Apply(ctx, pc, meta)
//
// Projection authors never need it: they define projections with package
// projection, and run them with package projector.
package projectionspec

import (
	"context"
	"fmt"

	"github.com/jetproj/jetproj/internal/projectionrt"
	"github.com/jetproj/jetproj/pkg/projection"
)

// The types package projection fills in, under the name the runtime uses.
type (
	Kind             = projectionrt.Kind
	Mode             = projectionrt.Mode
	SourceConfig     = projectionrt.SourceConfig
	Settings         = projectionrt.Settings
	StatementQueue   = projectionrt.StatementQueue
	PartitionContext = projectionrt.PartitionContext
	Emission         = projectionrt.Emission
	LinkStream       = projectionrt.LinkStream
)

// Kinds and modes.
const (
	Partitioned = projectionrt.Partitioned
	Global      = projectionrt.Global
	EventDriven = projectionrt.EventDriven
	Polling     = projectionrt.Polling
)

// Hooks are a definition's lifecycle hooks (nil when not set). An alias
// of an unnamed struct type, so that package projection, which cannot
// import this one, returns it.
type Hooks = struct {
	Init, Reset, Delete projection.Hook
	ResetPartition      projection.PartitionHook
}

// Spec is the runtime's view of one definition. It is a
// projection.Definer too, for the functions of package projector that take
// one.
type Spec interface {
	projection.Definer
	// Name is the projection's name.
	Name() string
	// Kind is partitioned or global.
	Kind() Kind
	// Validate reports every problem with the definition (as
	// projection.Definition.Validate).
	Validate() error
	// SourceConfig says where the messages come from.
	SourceConfig() SourceConfig
	// CustomSource is the source set with projection.FromSource, if any.
	CustomSource() projection.Source
	// Partitions is the partition provider in effect.
	Partitions() projection.PartitionProvider
	// AggregatePrefix is the subject prefix of an aggregate source's
	// events: "events" for the feeder's stream, FromStream's prefix
	// otherwise; empty for other sources.
	AggregatePrefix() string
	// Settings are the runtime settings, defaults applied.
	Settings() Settings
	// Deployment reports the deployment options: manual start, not live.
	Deployment() (manualStart, notLive bool)
	// IsInline reports whether the definition was marked with Inline.
	IsInline() bool
	// Hooks are the lifecycle hooks.
	Hooks() Hooks
	// Handles reports whether the definition has a handler for eventType
	// (OnAny's included).
	Handles(eventType string) bool
	// NewState returns a pointer to a fresh zero state (*S).
	NewState() any
	// DecodeState decodes stored state; empty data gives the zero state.
	DecodeState(data []byte) (any, error)
	// Apply runs the handler for m on the partition; events without a
	// handler are ignored.
	Apply(ctx context.Context, pc *PartitionContext, m projection.Meta) error
	// Flush runs the flush hook, if any.
	Flush(ctx context.Context, pc *PartitionContext) error
}

// Of returns the runtime's view of d's definition.
func Of(d projection.Definer) Spec {
	def := d.Def()
	s, ok := projectionrt.View(def).(Spec)
	if !ok {
		// Package projection's view lost a method Spec lists: a bug
		// that every test of the runtime shows at once.
		panic(fmt.Sprintf("projectionspec: %T does not implement Spec", projectionrt.View(def)))
	}
	return s
}
