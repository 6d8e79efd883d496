package contract

import (
	"strconv"
	"strings"
)

// Streams and the subjects they capture.
const (
	// EventsStream is the stream the feeder publishes the event store's
	// events to (FEEDER_STREAM's default).
	EventsStream = "EVENTS"
	// EventsPrefix is the first token of every event subject,
	// events.<aggregate_type>.<aggregate_id> (FEEDER_SUBJECT_PREFIX's
	// default).
	EventsPrefix = "events"
	// AllEvents matches every event subject: the subjects of EventsStream.
	AllEvents = EventsPrefix + ".>"

	// ProjectionStreamPrefix starts the name of every projection's own
	// stream: PROJECT_<NAME> (ProjectionStream).
	ProjectionStreamPrefix = "PROJECT_"
	// ProjectionPrefix is the first token of every derived-event subject,
	// project.<name>.<suffix…>.
	ProjectionPrefix = "project"
	// AllProjections matches the derived events of every projection on
	// their own streams.
	AllProjections = ProjectionPrefix + ".>"

	// LinkedStreamDescription is the description of the linked streams
	// jetproj creates; a stream without it is never used as a linked
	// stream unless the projection opts in by name (LinkExisting).
	LinkedStreamDescription = "jetproj linked stream"
)

// ProjectionStream is the name of projection name's own stream of derived
// events: PROJECT_<NAME>, the name in upper case.
func ProjectionStream(name string) string { return ProjectionStreamPrefix + strings.ToUpper(name) }

// ProjectionSubjects is the subject of projection name's own stream, which
// matches every derived event of the projection: project.<name>.>. A valid
// projection name ([a-z0-9_]+) is its own subject token.
func ProjectionSubjects(name string) string { return ProjectionPrefix + "." + name + ".>" }

// LinkedSubjects is the subject of a linked stream jetproj creates:
// <lowercase stream>.>.
func LinkedSubjects(stream string) string { return strings.ToLower(stream) + ".>" }

// LinkedSubject is the subject on linked stream stream of the derived event
// whose subject on its projection's own stream is subj: project.<name>.<…>
// becomes <lowercase stream>.<name>.<…>.
func LinkedSubject(stream, subj string) string {
	return strings.ToLower(stream) + "." + strings.TrimPrefix(subj, ProjectionPrefix+".")
}

// KV buckets.
const (
	// BucketPrefix starts the name of every KV bucket jetproj creates.
	BucketPrefix = "jetproj_"
	// RegistryBucket records every projection's lifecycle state; key: the
	// projection's name.
	RegistryBucket = BucketPrefix + "projections"
	// ProgressBucket holds how far each replica applied each projection,
	// while someone waits for it (memory storage).
	ProgressBucket = BucketPrefix + "progress"
	// StatusBucket holds the status every service publishes for the status
	// page.
	StatusBucket = BucketPrefix + "status"
	// FeederLeaseBucket holds the feeders' leases (FEEDER_LEASE_BUCKET's
	// default).
	FeederLeaseBucket = BucketPrefix + "feeder_leases"
	// FeederStateBucket holds the feeders' checkpoints and status
	// (FEEDER_STATE_BUCKET's default).
	FeederStateBucket = BucketPrefix + "feeder_state"
	// EmitterLeaseBucket holds the emitter's lease.
	EmitterLeaseBucket = BucketPrefix + "emitter_leases"
	// LeaseBucketPrefix starts the name of a projection's slot-lease
	// bucket (LeaseBucket).
	LeaseBucketPrefix = BucketPrefix + "leases_"
	// StateBucketPrefix starts the name of a projection's KV state bucket
	// (StateBucket).
	StateBucketPrefix = BucketPrefix + "state_"
)

// LeaseBucket is the bucket of projection name's slot leases:
// jetproj_leases_<name>.
func LeaseBucket(name string) string { return LeaseBucketPrefix + name }

// StateBucket is the bucket of projection name's positions and state when
// it has no PostgreSQL sink: jetproj_state_<name>.
func StateBucket(name string) string { return StateBucketPrefix + name }

// KVStream is the stream in which NATS keeps KV bucket bucket: KV_<bucket>.
// The name is NATS's, not jetproj's.
func KVStream(bucket string) string { return "KV_" + bucket }

// KVSubjectPrefix starts the subject of every key of KV bucket bucket:
// $KV.<bucket>. (the key follows). The name is NATS's, not jetproj's.
func KVSubjectPrefix(bucket string) string { return "$KV." + bucket + "." }

// Control subjects (core NATS).
const (
	// ControlPrefix starts the subject of a projection's partition commands
	// (ControlSubject).
	ControlPrefix = "jetproj.control"
	// AllControl matches the partition commands of every projection.
	AllControl = ControlPrefix + ".>"
	// ProgressPrefix starts the subject on which waiters ask a
	// projection's replicas to publish their progress (ProgressSubject).
	ProgressPrefix = "jetproj.progress"
	// AllProgress matches the progress requests of every projection.
	AllProgress = ProgressPrefix + ".>"
)

// ControlSubject is where partition commands (retry, skip, rebuild) of
// projection name reach the replica owning the partition, as requests:
// jetproj.control.<name>.
func ControlSubject(name string) string { return ControlPrefix + "." + name }

// ProgressSubject is where waiters ask projection name's replicas to
// publish their progress in ProgressBucket: jetproj.progress.<name>.
func ProgressSubject(name string) string { return ProgressPrefix + "." + name }

// Headers of event messages.
const (
	// HeaderMsgID is NATS's de-duplication header; jetproj sets it on every
	// message: EventMsgID for events, a derived event's own id otherwise.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderExpectedLastSequence is NATS's sequence fence; the feeder
	// publishes with it, and the stored message keeps it. A service that
	// republishes an event must not copy Nats-* headers.
	HeaderExpectedLastSequence = "Nats-Expected-Last-Sequence"

	// HeaderEventType is the event's type (also on derived events).
	HeaderEventType = "Event-Type"
	// HeaderEventPosition is the event's position in the event store.
	HeaderEventPosition = "Event-Position"
	// HeaderEventTransaction is the id of the transaction that wrote the
	// event.
	HeaderEventTransaction = "Event-Transaction"
	// HeaderAggregateType is the aggregate type, unencoded.
	HeaderAggregateType = "Aggregate-Type"
	// HeaderAggregateID is the aggregate id, unencoded.
	HeaderAggregateID = "Aggregate-Id"
	// HeaderAggregateVersion is the event's version in its aggregate.
	HeaderAggregateVersion = "Aggregate-Version"
	// HeaderRecordedAt is when the event was recorded, RFC 3339 with
	// nanoseconds, UTC.
	HeaderRecordedAt = "Recorded-At"
	// HeaderTraceParent is the W3C trace context (also on derived events,
	// naming the span that published them).
	HeaderTraceParent = "traceparent"
	// HeaderTraceState is the W3C trace state.
	HeaderTraceState = "tracestate"
	// MetaPrefix prefixes one header per metadata entry: metadata key
	// "tenant" becomes header "Meta-tenant". Keys are encoded like subject
	// tokens (package subject); eventmsg.MetaHeader and eventmsg.MetaEntry
	// build and read them.
	MetaPrefix = "Meta-"
)

// EventMsgIDPrefix starts the Nats-Msg-Id of every event message:
// event-<position>.
const EventMsgIDPrefix = "event-"

// EventMsgID is the deterministic Nats-Msg-Id of the event at position:
// event-<position>.
func EventMsgID(position int64) string {
	return EventMsgIDPrefix + strconv.FormatInt(position, 10)
}

// Headers of derived events, besides HeaderEventType, HeaderTraceParent,
// HeaderMsgID and the MetaPrefix headers.
const (
	// HeaderProjection is the name of the projection that emitted the
	// event.
	HeaderProjection = "Projection"
	// HeaderPartition is the partition key, escaped (derived.EscapeKey).
	HeaderPartition = "Partition"
	// HeaderGeneration is the projection's generation: it grows when a
	// deleted projection is initialised again.
	HeaderGeneration = "Projection-Generation"
	// HeaderEmissionSeq is the event's sequence among its partition's
	// derived events.
	HeaderEmissionSeq = "Emission-Seq"
	// HeaderSourceSequence is the stream sequence of the source event.
	HeaderSourceSequence = "Source-Sequence"
	// HeaderSourcePosition is the event store position of the source
	// event.
	HeaderSourcePosition = "Source-Position"
	// HeaderCausationID names the event that caused the derived event: the
	// source message's Nats-Msg-Id (event-<position> for the feeder's
	// events, the derived event's id in a pipeline), or
	// <stream>:<sequence> for a source message without one.
	HeaderCausationID = "Causation-Id"
	// HeaderCorrelationID is the MetadataCorrelationID entry of the derived
	// event's metadata (carried over from the source event, or given with
	// projection.WithMetadata), when it has one.
	HeaderCorrelationID = "Correlation-Id"
)

// MetadataCorrelationID is the metadata key HeaderCorrelationID comes from.
const MetadataCorrelationID = "correlation_id"
