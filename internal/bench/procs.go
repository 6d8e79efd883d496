package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/pkg/devenv"
)

// natsServerModule is the module the nats-server binary is built from: the
// version go.mod requires, the one the embedded server runs.
const natsServerModule = "github.com/nats-io/nats-server/v2"

// moduleRoot is the directory of jetproj's go.mod, found with `go env GOMOD`
// from the working directory (the benchmark runs from within the module).
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("bench: go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("bench: run the benchmark from within the jetproj module (go env GOMOD is empty)")
	}
	return filepath.Dir(mod), nil
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// goBuild builds pkg (a package path or a directory relative to the module
// root) into out.
func goBuild(ctx context.Context, root, out, pkg string) error {
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", out, pkg)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("bench: go build %s: %w\n%s", pkg, err, msg)
	}
	return nil
}

// natsServerVersion is the nats-server module version this program was
// built with ("" when unknown).
func natsServerVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, d := range bi.Deps {
		if d.Path == natsServerModule {
			if d.Replace != nil {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return ""
}

// natsServerBinary returns the path of a nats-server binary built from the
// module in go.mod, building it the first time into the user's cache
// directory (or the temporary directory), keyed by the module's version.
func natsServerBinary(ctx context.Context) (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	dir = filepath.Join(dir, "jetproj-bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("bench: cache dir: %w", err)
	}
	version := natsServerVersion()
	if version == "" || version == "(devel)" {
		version = "unknown"
	}
	bin := filepath.Join(dir, "nats-server-"+version)
	if version != "unknown" {
		if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
			return bin, nil
		}
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	// Built under a temporary name and renamed, so that a concurrent or
	// interrupted build never leaves half a binary under the final name.
	tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid())
	if err := goBuild(ctx, root, tmp, natsServerModule); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("bench: install nats-server: %w", err)
	}
	return bin, nil
}

// NATSProcess is a nats-server process with JetStream, on a free loopback
// port with its own store directory, started by this program. It dies with
// this program (parent-death signal) and Close stops it.
type NATSProcess struct {
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
	log  *lockedBuffer
	once sync.Once
}

// StartNATSProcess builds (once, cached) and starts a nats-server process
// with JetStream and the server's default settings (writes are synced on
// the server's interval, as a default deployment's are), and waits until
// JetStream answers.
func StartNATSProcess(ctx context.Context) (*NATSProcess, error) {
	bin, err := natsServerBinary(ctx)
	if err != nil {
		return nil, err
	}
	port, err := devenv.FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "jetproj-bench-nats-")
	if err != nil {
		return nil, fmt.Errorf("bench: nats dir: %w", err)
	}
	conf := filepath.Join(dir, "nats.conf")
	body := fmt.Sprintf("server_name: jetproj-bench\nhost: 127.0.0.1\nport: %d\njetstream {\n  store_dir: %q\n}\n",
		port, filepath.Join(dir, "store"))
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: nats config: %w", err)
	}
	n := &NATSProcess{dir: dir, port: port, done: make(chan struct{}), log: &lockedBuffer{}}
	// The process outlives ctx: Close stops it.
	n.cmd = exec.Command(bin, "-c", conf)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bench: start nats-server: %w", err)
	}
	go func() {
		_ = n.cmd.Wait()
		close(n.done)
	}()
	if err := n.waitReady(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *NATSProcess) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		select {
		case <-n.done:
			return fmt.Errorf("bench: nats-server exited at start: %s\n%s", n.cmd.ProcessState, n.log.tail(2000))
		default:
		}
		if last = jetStreamReady(ctx, n.URL()); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bench: nats-server not ready: %w (last error: %v)", ctx.Err(), last)
		case <-n.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// jetStreamReady connects to url and asks JetStream for the account's
// information.
func jetStreamReady(ctx context.Context, url string) error {
	nc, err := nats.Connect(url, nats.NoReconnect(), nats.Timeout(time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// URL is the server's client URL.
func (n *NATSProcess) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

// Dir is the directory holding the configuration and the store.
func (n *NATSProcess) Dir() string { return n.dir }

// PID is the server's process id.
func (n *NATSProcess) PID() int { return n.cmd.Process.Pid }

// Close stops the server (SIGTERM, then SIGKILL after 10 s), waits for it
// and removes its directory. Safe to call twice.
func (n *NATSProcess) Close() {
	n.once.Do(func() {
		stopProcess(n.cmd, n.done, 10*time.Second)
		_ = os.RemoveAll(n.dir)
	})
}

// stopProcess sends SIGTERM to cmd's process and SIGKILL when it has not
// exited (done closed) within grace; it returns once the process is gone.
func stopProcess(cmd *exec.Cmd, done <-chan struct{}, grace time.Duration) {
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

// lockedBuffer is an io.Writer that several goroutines may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// tail is the last n bytes written.
func (b *lockedBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.b.Bytes()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return string(bytes.TrimSpace(s))
}
