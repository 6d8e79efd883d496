package process

import (
	"fmt"
	"os"
)

// Instance is a service's default name for itself in leases, logs and on
// the status page (FEEDER_INSTANCE, EMITTER_INSTANCE): its host name — in
// Kubernetes the pod's — and process id.
func Instance() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}
