package bench

import (
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

	"github.com/jetproj/jetproj/internal/devenv"
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
	bin  string
	conf string
	// name is the server_name.
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  *boundedBuffer
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
	n := &NATSProcess{dir: dir, port: port, bin: bin, conf: conf, name: "jetproj-bench", log: newBoundedBuffer()}
	if err := n.launch(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := n.waitReady(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// launch starts the server process with its configuration file. The
// process outlives any context: Close or Kill stop it.
func (n *NATSProcess) launch() error {
	n.done = make(chan struct{})
	n.cmd = exec.Command(n.bin, "-c", n.conf)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		return fmt.Errorf("bench: start nats-server %s: %w", n.name, err)
	}
	cmd, done := n.cmd, n.done
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return nil
}

// Kill ends the server with SIGKILL, as a crash would, and waits until the
// process is gone; its store stays for Restart.
func (n *NATSProcess) Kill() {
	select {
	case <-n.done:
		return
	default:
	}
	_ = n.cmd.Process.Kill()
	<-n.done
}

// Restart starts a killed server again with the same configuration and
// store, and waits until JetStream answers through it.
func (n *NATSProcess) Restart(ctx context.Context) error {
	if err := n.launch(); err != nil {
		return err
	}
	return n.waitReady(ctx)
}

// Name is the server's server_name, as stream and cluster information name
// it.
func (n *NATSProcess) Name() string { return n.name }

// NATSCluster is three (or more) nats-server processes clustered over
// loopback routes, each with its own port and store directory, started by
// this program.
type NATSCluster struct {
	Nodes []*NATSProcess
}

// StartNATSCluster builds (once, cached) and starts size nats-server
// processes named n1, n2 … with JetStream and default settings, routed to
// each other as one cluster, and waits until JetStream answers through
// each. Close stops them and removes their directories.
func StartNATSCluster(ctx context.Context, size int) (*NATSCluster, error) {
	bin, err := natsServerBinary(ctx)
	if err != nil {
		return nil, err
	}
	c := &NATSCluster{}
	routePorts := make([]int, size)
	routes := make([]string, size)
	for i := range size {
		if routePorts[i], err = devenv.FreePort(); err != nil {
			return nil, err
		}
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", routePorts[i])
	}
	for i := range size {
		port, err := devenv.FreePort()
		if err != nil {
			c.Close()
			return nil, err
		}
		dir, err := os.MkdirTemp("", "jetproj-bench-nats-cluster-")
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("bench: nats dir: %w", err)
		}
		n := &NATSProcess{dir: dir, port: port, bin: bin, conf: filepath.Join(dir, "nats.conf"),
			name: fmt.Sprintf("n%d", i+1), log: newBoundedBuffer(), done: make(chan struct{})}
		close(n.done) // not started yet
		c.Nodes = append(c.Nodes, n)
		body := fmt.Sprintf("server_name: %s\nhost: 127.0.0.1\nport: %d\njetstream {\n  store_dir: %q\n}\ncluster {\n  name: jetproj-bench\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n",
			n.name, port, filepath.Join(dir, "store"), routePorts[i], strings.Join(routes, ", "))
		if err := os.WriteFile(n.conf, []byte(body), 0o644); err != nil {
			c.Close()
			return nil, fmt.Errorf("bench: nats config: %w", err)
		}
	}
	// All first, then wait: a node's JetStream answers once the cluster
	// has a meta leader, which needs a quorum of nodes up.
	for _, n := range c.Nodes {
		if err := n.launch(); err != nil {
			c.Close()
			return nil, err
		}
	}
	for _, n := range c.Nodes {
		if err := n.waitReady(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// URL names every node, as NATS_URL does.
func (c *NATSCluster) URL() string {
	urls := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		urls[i] = n.URL()
	}
	return strings.Join(urls, ",")
}

// PIDs are the nodes' current process ids.
func (c *NATSCluster) PIDs() []int {
	pids := make([]int, len(c.Nodes))
	for i, n := range c.Nodes {
		pids[i] = n.PID()
	}
	return pids
}

// Node is the node whose server_name is name (nil when none).
func (c *NATSCluster) Node(name string) *NATSProcess {
	for _, n := range c.Nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// Close stops every node and removes their directories. Safe to call
// twice.
func (c *NATSCluster) Close() {
	for _, n := range c.Nodes {
		n.Close()
	}
}

func (n *NATSProcess) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second) // a cluster elects its meta leader slowly on a busy machine
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
