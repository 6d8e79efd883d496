package projector

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
