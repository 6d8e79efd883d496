// Package lease gives one process at a time exclusive ownership of a named
// key in a JetStream KV bucket, with the key's KV revision as the fencing
// token.
//
// A lease is the KV entry of its key: Acquire creates it (kv.Create), Renew
// rewrites it only if its revision is still the one we wrote (kv.Update), and
// Release deletes it only under the same condition (kv.Delete with
// jetstream.LastRevision), so a holder that lost its lease can never renew or
// delete somebody else's. The bucket has a bucket-wide TTL (MaxAge, see
// EnsureBucket); every renewal writes a new message and so restarts the
// clock, and a holder that stops renewing loses the key when its last message
// ages out. Per-message TTLs are not used because Update does not carry them.
//
// Every successful Acquire or Renew returns a new, strictly larger revision.
// Pass Lease.Revision along with writes made under the lease and let the
// receiver reject writes carrying an older revision than one it has seen.
//
// Two levels of API:
//
//   - Acquire, Lease.Renew and Lease.Release are single requests without
//     goroutines or timers, cheap enough to hold hundreds of leases (hash
//     slots) from one loop.
//   - Run keeps one key for the life of a service: it waits as standby,
//     takes the lease over as soon as it is released (watching the key) or
//     has expired (polling), runs the work under a context that is cancelled
//     when the lease is lost, renews in the background, and fences itself
//     (stops the work) before the lease can expire on the server, so two
//     holders never run at once as long as clocks advance at similar rates.
package lease
