// Package grafana holds no code: deploy/grafana/jetproj-dashboard.json is a
// Grafana dashboard of the metrics the services export on /metrics, and
// this package's test checks that every query in it names a metric the code
// registers.
package grafana
