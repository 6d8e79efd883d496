package projectorsvc

import "time"

// SetMetricsIntervals shortens how often the gauges are computed, until
// restore.
func SetMetricsIntervals(lag, summary time.Duration) (restore func()) {
	l, s := lagInterval, summaryInterval
	lagInterval, summaryInterval = lag, summary
	return func() { lagInterval, summaryInterval = l, s }
}

// SetWatchInterval shortens how often status --watch reads, until restore.
func SetWatchInterval(d time.Duration) (restore func()) {
	w := watchInterval
	watchInterval = d
	return func() { watchInterval = w }
}
