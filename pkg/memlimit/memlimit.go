// Package memlimit gives a service a soft memory limit below its
// container's: Go's garbage collector then works harder before the kernel
// kills the process. A projector keeps every known partition in memory, so
// this matters for it.
package memlimit

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// DefaultCgroupFile is where cgroup v2 publishes the container's limit.
const DefaultCgroupFile = "/sys/fs/cgroup/memory.max"

// Fraction of the container's limit used as the soft limit.
const Fraction = 0.85

// FromCgroup sets the runtime's soft memory limit to Fraction of the limit
// in file, unless GOMEMLIMIT is set or there is no limit. It returns the
// limit it set (0 when none).
func FromCgroup(file string) int64 {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	v := strings.TrimSpace(string(b))
	if v == "" || v == "max" {
		return 0
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0
	}
	limit := int64(float64(n) * Fraction)
	debug.SetMemoryLimit(limit)
	return limit
}
