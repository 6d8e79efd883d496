package projection

import (
	"context"
	"fmt"

	jsonv1 "github.com/go-json-experiment/json/v1" // encoding/json's behaviour, decoding ~2.5× faster

	"github.com/jetproj/jetproj/internal/projectionrt"
	"github.com/jetproj/jetproj/pkg/contract"
)

// runtimeView is a Definition as its runtime sees it: the methods of
// internal/projectionspec.Spec, which the projector reads through
// projectionspec.Of. They are not part of this package's API.
type runtimeView Definition

func init() {
	projectionrt.SetView(func(def any) any { return (*runtimeView)(def.(*Definition)) })
}

func (v *runtimeView) Def() *Definition { return (*Definition)(v) }

func (v *runtimeView) Name() string { return v.name }

func (v *runtimeView) Kind() projectionrt.Kind { return v.kind }

func (v *runtimeView) Validate() error { return v.Def().Validate() }

func (v *runtimeView) SourceConfig() projectionrt.SourceConfig { return v.source }

func (v *runtimeView) CustomSource() Source { return v.customSource }

func (v *runtimeView) Partitions() PartitionProvider {
	switch {
	case v.kind == projectionrt.Global:
		return GlobalPartitions{}
	case v.partitions != nil:
		return v.partitions
	case len(v.source.AggregateTypes) > 0:
		return AggregatePartitions{}
	case v.source.PartitionKey != nil:
		f := v.source.PartitionKey
		return PartitionFunc(func(m Message) (string, error) { return f(m.Subject), nil })
	default:
		return SubjectPartitions{Skip: 2}
	}
}

func (v *runtimeView) AggregatePrefix() string {
	if len(v.source.AggregateTypes) == 0 {
		return ""
	}
	if v.aggStream != "" {
		return v.aggPrefix
	}
	return contract.EventsPrefix
}

func (v *runtimeView) Settings() projectionrt.Settings {
	catchUp := v.catchUp
	switch {
	case catchUp > 0:
	case v.batchSet:
		catchUp = v.batchSize
	default:
		catchUp = 8 * v.batchSize
	}
	return projectionrt.Settings{BatchSize: v.batchSize, CatchUpBatchSize: max(catchUp, v.batchSize), MaxAttempts: v.maxAttempts, BackoffMin: v.backoffMin, BackoffMax: v.backoffMax,
		Slots: v.slots, Mode: v.mode, Interval: v.interval, WriteEvery: v.writeEvery, Pool: v.pool, TenantPools: v.tenantPools, Postgres: v.postgres, Store: v.store}
}

func (v *runtimeView) Deployment() (manualStart, notLive bool) { return v.manualStart, v.notLive }

func (v *runtimeView) IsInline() bool { return v.inline }

// Hooks has the shape of projectionspec.Hooks, which this package cannot
// name (projectionspec imports it): an unnamed struct type converts.
func (v *runtimeView) Hooks() struct {
	Init, Reset, Delete Hook
	ResetPartition      PartitionHook
} {
	return struct {
		Init, Reset, Delete Hook
		ResetPartition      PartitionHook
	}{v.onInit, v.onReset, v.onDelete, v.onResetPart}
}

func (v *runtimeView) Handles(eventType string) bool {
	_, ok := v.handlers[eventType]
	return ok || v.catchAll != nil
}

func (v *runtimeView) NewState() any { return v.newState() }

func (v *runtimeView) DecodeState(data []byte) (any, error) {
	s := v.newState()
	if len(data) == 0 {
		return s, nil
	}
	if err := jsonv1.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("projection %s: stored state does not decode into %v: %w", v.name, v.stateType, err)
	}
	return s, nil
}

func (v *runtimeView) Apply(ctx context.Context, pc *projectionrt.PartitionContext, m Meta) error {
	h, ok := v.handlers[m.Type]
	if !ok {
		h = v.catchAll
	}
	if h == nil {
		return nil
	}
	return h(ctx, pc, m)
}

func (v *runtimeView) Flush(ctx context.Context, pc *projectionrt.PartitionContext) error {
	if v.flush == nil {
		return nil
	}
	return v.flush(ctx, pc)
}
