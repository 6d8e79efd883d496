package contract_test

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/jetproj/jetproj/pkg/contract"
)

// The names on the wire, spelled out: changing one is a breaking change for
// every system that relies on it, so it must show up here (and in
// docs/contract.md, TestDocsMatchContract).
func TestNames(t *testing.T) {
	for _, c := range [][2]string{
		{contract.EventsStream, "EVENTS"},
		{contract.EventsPrefix, "events"},
		{contract.AllEvents, "events.>"},
		{contract.EventMsgID(42), "event-42"},
		{contract.ProjectionStream("wallet_balance"), "PROJECT_WALLET_BALANCE"},
		{contract.ProjectionSubjects("wallet_balance"), "project.wallet_balance.>"},
		{contract.AllProjections, "project.>"},
		{contract.LinkedSubjects("completed_orders"), "completed_orders.>"},
		{contract.LinkedSubjects("Audit"), "audit.>"},
		{contract.LinkedSubject("Audit", "project.order_fulfilment.shipment.s-1"), "audit.order_fulfilment.shipment.s-1"},
		{contract.LinkedStreamDescription, "jetproj linked stream"},
		{contract.RegistryBucket, "jetproj_projections"},
		{contract.ProgressBucket, "jetproj_progress"},
		{contract.StatusBucket, "jetproj_status"},
		{contract.FeederLeaseBucket, "jetproj_feeder_leases"},
		{contract.FeederStateBucket, "jetproj_feeder_state"},
		{contract.EmitterLeaseBucket, "jetproj_emitter_leases"},
		{contract.LeaseBucket("wallet_balance"), "jetproj_leases_wallet_balance"},
		{contract.StateBucket("wallet_balance"), "jetproj_state_wallet_balance"},
		{contract.KVStream("jetproj_progress"), "KV_jetproj_progress"},
		{contract.KVSubjectPrefix("jetproj_progress"), "$KV.jetproj_progress."},
		{contract.ControlSubject("wallet_balance"), "jetproj.control.wallet_balance"},
		{contract.AllControl, "jetproj.control.>"},
		{contract.ProgressSubject("wallet_balance"), "jetproj.progress.wallet_balance"},
		{contract.AllProgress, "jetproj.progress.>"},
		{contract.MetadataCorrelationID, "correlation_id"},
	} {
		if got, want := c[0], c[1]; got != want {
			t.Errorf("%q, want %q", got, want)
		}
	}
}

func TestHeaders(t *testing.T) {
	for _, c := range [][2]string{
		{contract.HeaderMsgID, nats.MsgIdHdr},
		{contract.HeaderExpectedLastSequence, nats.ExpectedLastSeqHdr},
		{contract.HeaderEventType, "Event-Type"},
		{contract.HeaderEventPosition, "Event-Position"},
		{contract.HeaderEventTransaction, "Event-Transaction"},
		{contract.HeaderAggregateType, "Aggregate-Type"},
		{contract.HeaderAggregateID, "Aggregate-Id"},
		{contract.HeaderAggregateVersion, "Aggregate-Version"},
		{contract.HeaderRecordedAt, "Recorded-At"},
		{contract.HeaderTraceParent, "traceparent"},
		{contract.HeaderTraceState, "tracestate"},
		{contract.MetaPrefix, "Meta-"},
		{contract.HeaderProjection, "Projection"},
		{contract.HeaderPartition, "Partition"},
		{contract.HeaderGeneration, "Projection-Generation"},
		{contract.HeaderEmissionSeq, "Emission-Seq"},
		{contract.HeaderSourceSequence, "Source-Sequence"},
		{contract.HeaderSourcePosition, "Source-Position"},
		{contract.HeaderCausationID, "Causation-Id"},
		{contract.HeaderCorrelationID, "Correlation-Id"},
	} {
		if got, want := c[0], c[1]; got != want {
			t.Errorf("%q, want %q", got, want)
		}
	}
}
