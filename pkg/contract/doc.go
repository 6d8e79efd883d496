// Package contract is jetproj's wire contract: the name of every JetStream
// stream, subject, KV bucket, message header and control subject that
// jetproj creates, publishes, reads or listens on. It is what other systems
// may rely on — a service subscribing to derived events, a tool reading the
// registry with the nats CLI, the NATS permissions of a deployment — and
// the one place jetproj's own code takes these names from: no other
// package spells them.
//
// docs/contract.md describes the contract in prose (a test checks that the
// names it lists are the ones defined here); this package is its Go form.
//
// What lives where:
//
//   - names — streams, subject prefixes and the subjects of whole streams,
//     buckets, headers, message-id prefixes, control subjects — are here;
//   - the encoding of free text (aggregate types and ids, partition keys)
//     into subject tokens, and the subjects built from such tokens
//     (events.<type>.<id>, project.<name>.<suffix…>), are package subject,
//     which builds them from the prefixes defined here;
//   - the building and parsing of whole event messages (header values,
//     metadata) is package eventmsg, with the header names defined here.
//
// # Event messages
//
// The feeder publishes each stored event to stream [EventsStream], subject
// events.<aggregate_type>.<aggregate_id> ([EventsPrefix]; subject.Event),
// with the headers [HeaderMsgID] ([EventMsgID]), [HeaderEventType],
// [HeaderEventPosition], [HeaderEventTransaction], [HeaderAggregateType],
// [HeaderAggregateID], [HeaderAggregateVersion], [HeaderRecordedAt],
// [HeaderTraceParent] and [HeaderTraceState] when the metadata has them,
// and one [MetaPrefix]<key> header per metadata entry.
//
// # Derived events
//
// Projection <name> owns stream [ProjectionStream](name), PROJECT_<NAME>,
// whose subjects are [ProjectionSubjects](name), project.<name>.>. A derived
// event carries [HeaderEventType], [HeaderProjection], [HeaderPartition],
// [HeaderGeneration], [HeaderEmissionSeq], [HeaderSourceSequence],
// [HeaderSourcePosition], [HeaderCausationID], [HeaderCorrelationID] (from
// the metadata entry [MetadataCorrelationID]), [MetaPrefix]<key> headers,
// [HeaderTraceParent] and a deterministic [HeaderMsgID]. Linked to stream S
// it goes to [LinkedSubject](S, subject) on S, a stream jetproj creates with
// subjects [LinkedSubjects](S) and description [LinkedStreamDescription].
//
// # KV buckets
//
// jetproj keeps its state in KV buckets named [BucketPrefix]…: the
// projections' registry [RegistryBucket], per projection the slot leases
// [LeaseBucket](name) and, without a PostgreSQL sink, the state
// [StateBucket](name); the progress replicas publish while someone waits
// [ProgressBucket]; the feeders' leases [FeederLeaseBucket] and checkpoints
// [FeederStateBucket]; the emitter's lease [EmitterLeaseBucket]; the
// services' status [StatusBucket]. NATS keeps bucket B in stream
// [KVStream](B). The keys inside a bucket are its owner's business.
//
// # Control subjects
//
// Partition commands reach the replica owning the partition as requests on
// [ControlSubject](name) (all of them: [AllControl]); a waiter asks a
// projection's replicas to publish their progress on [ProgressSubject](name)
// (all of them: [AllProgress]).
package contract
