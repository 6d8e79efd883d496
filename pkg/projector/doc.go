// Package projector runs projections (package projection) against
// JetStream: it reads each projection's subjects with one long-lived ordered
// consumer per process, routes messages to partitions in the process, and
// runs handlers in batches whose read-model writes, positions and state
// commit together.
//
// # Partitions, slots and replicas
//
// A partition is one aggregate (or one partition key of a streaming
// source). Partitions hash into slots; replicas own slots through KV leases
// (bucket jetproj_leases_<name>), whose revisions are fencing tokens, and
// share them evenly: when a replica joins, leaves or dies, the slots are
// rebalanced within about two lease periods. A replica loads the records of
// the slots it acquires into memory, so processing needs no reads.
//
// # Exactly-once effects
//
// Each record carries the stream sequence of the last message its partition
// handled. A batch writes records with compare-and-set on their revision
// (KV) or in the read model's transaction with a fence-token check
// (PostgreSQL), so a message is never applied twice, whatever crashed when.
//
// # Failures
//
// A handler error rolls back only its partition's part of the batch; the
// partition retries with exponential backoff, reading its own messages with
// direct get, and is parked after the configured attempts with its error and
// failing message recorded. Other partitions keep going.
package projector
