// A service's soft memory limit sits below its container's: Go's garbage
// collector then works harder before the kernel kills the process. A
// projector keeps every known partition in memory, so this matters for it.

package process

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// DefaultCgroupFile is where cgroup v2 publishes the container's limit.
const DefaultCgroupFile = "/sys/fs/cgroup/memory.max"

// MemLimitFraction of the container's limit used as the soft limit.
const MemLimitFraction = 0.85

// MemLimitFromCgroup sets the runtime's soft memory limit to MemLimitFraction of the limit
// in file, unless GOMEMLIMIT is set or there is no limit. It returns the
// limit it set (0 when none).
func MemLimitFromCgroup(file string) int64 {
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
	limit := int64(float64(n) * MemLimitFraction)
	debug.SetMemoryLimit(limit)
	return limit
}
