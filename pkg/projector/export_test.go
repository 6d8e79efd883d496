package projector

import "time"

// WithUnpublishedLimit sets the bound of refused derived events all
// partitions of a projection keep (maxUnpublishedTotal), for tests.
func WithUnpublishedLimit(o Options, n int) Options {
	o.unpublishedLimit = n
	return o
}

// WithStaleRegistry leaves the replica's copy of the registry as it read it
// at start (no watch), for tests of what must not depend on the watch.
func WithStaleRegistry(o Options) Options {
	o.staleRegistry = true
	return o
}

// WithConsumerCheck sets how often an idle runner asks the source whether
// its consumer holds messages back (consumerCheckEvery), for tests.
func WithConsumerCheck(o Options, d time.Duration) Options {
	o.consumerCheck = d
	return o
}

// WithStuckAfter sets how long a loop may be busy with one step before the
// projector logs it with the goroutines' stacks (stuckAfter), for tests.
func WithStuckAfter(o Options, d time.Duration) Options {
	o.stuckAfter = d
	return o
}
