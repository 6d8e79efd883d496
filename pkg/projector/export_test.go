package projector

// WithUnpublishedLimit sets the bound of refused derived events all
// partitions of a projection keep (maxUnpublishedTotal), for tests.
func WithUnpublishedLimit(o Options, n int) Options {
	o.unpublishedLimit = n
	return o
}
