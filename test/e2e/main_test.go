package e2e

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
)

// TestMain does what devtest.Main does (stop the shared PostgreSQL cluster,
// check for leaked goroutines) and also removes the binaries the tests
// built: devtest.Main ends with os.Exit, which would leave them behind.
func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// make test-short: the end-to-end tests build the real binaries
		// and run them for minutes.
		fmt.Println("e2e: skipped with -short")
		os.Exit(0)
	}
	code := m.Run()
	bins.remove()
	if c := cluster.Load(); c != nil {
		if err := c.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "stop postgres: %v\n", err)
		}
	}
	if code == 0 {
		if err := goleak.Find(devtest.LeakOptions()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// cluster is the shared PostgreSQL cluster once a test has used it.
var cluster atomic.Pointer[devenv.Postgres]

// newDatabase creates a fresh database for the test and returns its URL.
func newDatabase(t *testing.T) string {
	t.Helper()
	url := devtest.Postgres(t)
	cluster.Store(devtest.Cluster(t))
	return url
}

// binaries are built once per test binary, by the first test that needs
// them, into a temporary directory that TestMain removes.
type binaries struct {
	once       sync.Once
	dir        string
	err        error
	feeder     string
	natsServer string
	projector  string
	emitter    string
	// kvProjector is the projector with the examples and a KV-state
	// projection that emits (internal/kvprojector).
	kvProjector string
}

var bins binaries

// build returns the built binaries, building them on first use.
func (b *binaries) build(t *testing.T) *binaries {
	t.Helper()
	b.once.Do(func() { b.err = b.buildAll() })
	if b.err != nil {
		t.Fatalf("build binaries: %v", b.err)
	}
	return b
}

func (b *binaries) buildAll() error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go") //nolint:staticcheck // no go in PATH: the toolchain that built this test
	}
	if b.dir, err = os.MkdirTemp("", "jetproj-e2e-bin-"); err != nil {
		return err
	}
	b.feeder = filepath.Join(b.dir, "feeder")
	b.natsServer = filepath.Join(b.dir, "nats-server")
	b.projector = filepath.Join(b.dir, "projector")
	b.emitter = filepath.Join(b.dir, "emitter")
	b.kvProjector = filepath.Join(b.dir, "kvprojector")
	targets := map[string]string{
		b.feeder:      "./services/feeder",
		b.projector:   "./services/projector",
		b.emitter:     "./services/emitter",
		b.kvProjector: "./test/e2e/internal/kvprojector",
		b.natsServer:  "github.com/nats-io/nats-server/v2",
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for out, pkg := range targets {
		wg.Go(func() {
			cmd := exec.Command(goCmd, "build", "-o", out, pkg)
			cmd.Dir = root
			if msg, err := cmd.CombinedOutput(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("go build %s: %w\n%s", pkg, err, msg))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (b *binaries) remove() {
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
	}
}

// moduleRoot walks up from the working directory (test/e2e under go test)
// to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module github.com/jetproj/jetproj\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of github.com/jetproj/jetproj above the working directory")
		}
		dir = parent
	}
}
