package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/devenv"
	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/contract"
)

// logTailLines is how much of a process's output a failed test prints.
const logTailLines = 300

// proc is a process started by a test. It is killed when the test ends, and
// its output is logged when the test failed.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout devtest.LogBuffer
	stderr devtest.LogBuffer
	done   chan struct{} // closed when the process has exited
	state  *os.ProcessState
}

// startProc starts path with exactly the environment env (nothing is
// inherited from the test's environment).
func startProc(t *testing.T, name, path string, env map[string]string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	if p.cmd.Env == nil {
		p.cmd.Env = []string{} // not nil: nil would inherit os.Environ
	}
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	// The child dies with the test binary, whatever happens to it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s (pid %d, %s) stderr, last %d lines ---\n%s", p.name, p.cmd.Process.Pid, p.state, logTailLines, tail(p.stderr.String(), logTailLines))
			if out := p.stdout.String(); out != "" {
				t.Logf("--- %s stdout ---\n%s", p.name, tail(out, logTailLines))
			}
		}
	})
	return p
}

func tail(s string, lines int) string {
	s = strings.TrimRight(s, "\n")
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			if lines--; lines == 0 {
				return "[…]\n" + s[i+1:]
			}
		}
	}
	return s
}

// kill ends the process with SIGKILL and waits until it is gone. Safe to
// call on a process that has exited.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logLines are the JSON log lines the process wrote to stderr.
func (p *proc) logLines() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// logged reports whether the process logged a line with this message.
func (p *proc) logged(msg string) bool {
	return slices.ContainsFunc(p.logLines(), func(m map[string]any) bool { return m["msg"] == msg })
}

// natsServer is a nats-server process with JetStream and its own store
// directory, restartable on the same port and directory.
type natsServer struct {
	t    *testing.T
	name string // server_name of a cluster node; empty otherwise
	port int
	dir  string
	conf string
	p    *proc
	runs int
}

// startNATS starts a nats-server process with JetStream on a free loopback
// port and waits until it accepts connections and JetStream answers.
// Every write is synced, as the project's embedded default does.
func startNATS(t *testing.T) *natsServer {
	t.Helper()
	port, err := devenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &natsServer{t: t, port: port, dir: t.TempDir()}
	s.conf = filepath.Join(s.dir, "nats.conf")
	conf := fmt.Sprintf(`server_name: e2e
host: 127.0.0.1
port: %d
jetstream {
  store_dir: %q
  sync_interval: always
}
`, port, filepath.Join(s.dir, "store"))
	if err := os.WriteFile(s.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	s.start()
	return s
}

// URL is the server's client URL.
func (s *natsServer) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

// start starts the server process (again) and waits until it is ready.
func (s *natsServer) start() {
	s.t.Helper()
	s.launch()
	s.waitReady()
}

// launch starts the server process (again) without waiting for it: the
// nodes of a cluster only answer once a quorum of them runs.
func (s *natsServer) launch() {
	s.t.Helper()
	s.runs++
	name := "nats-server"
	if s.name != "" {
		name += " " + s.name
	}
	s.p = startProc(s.t, fmt.Sprintf("%s (run %d)", name, s.runs), bins.build(s.t).natsServer, nil, "-c", s.conf)
}

// waitReady waits until the server accepts connections and JetStream
// answers through it.
func (s *natsServer) waitReady() {
	s.t.Helper()
	devtest.Eventually(s.t, 30*time.Second, func() error {
		if s.p.exited() {
			s.t.Fatalf("nats-server exited at start: %s\n%s", s.p.state, tail(s.p.stderr.String(), 50))
		}
		nc, err := nats.Connect(s.URL(), nats.NoReconnect(), nats.Timeout(time.Second))
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
		return err
	})
}

// kill ends the server with SIGKILL, as a crash of the process would.
func (s *natsServer) kill() { s.p.kill() }

// connect returns a connection and a JetStream context for the test's own
// checks; it reconnects forever and is closed when the test ends.
func (s *natsServer) connect(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(s.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// feederEnv is the environment of a feeder process: the required settings,
// a short lease so that takeovers are quick, and JSON logs.
func feederEnv(dbURL, natsURL, instance string) map[string]string {
	env := map[string]string{
		"DATABASE_URL":     dbURL,
		"FEEDER_LEASE_TTL": "2s",
		"FEEDER_INSTANCE":  instance,
		"LOG_FORMAT":       "json",
		// Several processes run on this machine: each its own port.
		"OPS_ADDR": "127.0.0.1:0",
	}
	if natsURL != "" {
		env["NATS_URL"] = natsURL
	}
	return env
}

// startFeeder starts `feeder run` with env.
func startFeeder(t *testing.T, name string, env map[string]string) *proc {
	t.Helper()
	return startProc(t, name, bins.build(t).feeder, env, "run")
}

// result is the outcome of a command run to its end.
type result struct {
	code           int
	stdout, stderr string
	took           time.Duration
}

// runFeeder runs a feeder command with exactly the environment env, to its
// end within a deadline. The caller reports its output when it matters.
func runFeeder(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	return runBinary(t, bins.build(t).feeder, env, args...)
}

// runBinary runs the program at path with exactly the environment env, to
// its end within a deadline.
func runBinary(t *testing.T, path string, env map[string]string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = []string{}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) || ctx.Err() != nil {
		t.Fatalf("%s %s: %v (ctx: %v)\nstderr:\n%s", filepath.Base(path), strings.Join(args, " "), err, ctx.Err(), r.stderr)
	}
	return r
}

// leaseHolder reads the holder of the feeder's lease from the KV bucket
// jetproj_feeder_leases, key "events".
func leaseHolder(ctx context.Context, js jetstream.JetStream) (string, error) {
	kv, err := js.KeyValue(ctx, contract.FeederLeaseBucket)
	if err != nil {
		return "", err
	}
	e, err := kv.Get(ctx, "events")
	if err != nil {
		return "", err
	}
	var rec struct {
		Holder string `json:"holder"`
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return "", fmt.Errorf("lease record %q: %w", e.Value(), err)
	}
	if rec.Holder == "" {
		return "", errors.New("lease record without holder")
	}
	return rec.Holder, nil
}
