package process

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

func TestFromCgroup(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	defer debug.SetMemoryLimit(math.MaxInt64)
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "memory.max")
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if got := MemLimitFromCgroup(write("max\n")); got != 0 {
		t.Errorf("no limit: set %d", got)
	}
	if got := MemLimitFromCgroup(filepath.Join(dir, "missing")); got != 0 {
		t.Errorf("no file: set %d", got)
	}
	got := MemLimitFromCgroup(write("1000000000\n"))
	if got != 850000000 || debug.SetMemoryLimit(-1) != 850000000 {
		t.Errorf("1 GB container: set %d", got)
	}
	t.Setenv("GOMEMLIMIT", "100MiB")
	if got := MemLimitFromCgroup(write("1000000000\n")); got != 0 {
		t.Errorf("GOMEMLIMIT set: still set %d", got)
	}
}
