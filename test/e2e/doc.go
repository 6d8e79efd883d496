// Package e2e holds jetproj's end-to-end tests: they build the service
// binaries and a NATS server from the module, run them as separate
// processes against a throwaway PostgreSQL cluster, kill them with SIGKILL
// at random moments, and check the guarantees of the contract from the
// outside (every committed event in stream EVENTS exactly once, in order per
// aggregate; a standby takes over; bad configuration fails fast).
//
// Run them with
//
//	go test ./test/e2e/ -count=1 -v
//
// They need the PostgreSQL server binaries (see package devenv) and the go
// command, and take about half a minute on two cores.
package e2e
