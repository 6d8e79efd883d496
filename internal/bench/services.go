package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// serviceBinaries are the service binaries built from this module, as
// production runs them.
type serviceBinaries struct {
	dir                        string
	feeder, projector, emitter string
}

// buildServices builds ./services/feeder, ./services/projector and
// ./services/emitter into a new temporary directory; remove removes it.
func buildServices(ctx context.Context) (*serviceBinaries, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "jetproj-bench-bin-")
	if err != nil {
		return nil, fmt.Errorf("bench: bin dir: %w", err)
	}
	b := &serviceBinaries{dir: dir,
		feeder:    filepath.Join(dir, "feeder"),
		projector: filepath.Join(dir, "projector"),
		emitter:   filepath.Join(dir, "emitter"),
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for out, pkg := range map[string]string{b.feeder: "./services/feeder", b.projector: "./services/projector", b.emitter: "./services/emitter"} {
		wg.Go(func() {
			if err := goBuild(ctx, root, out, pkg); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.remove()
		return nil, err
	}
	return b, nil
}

func (b *serviceBinaries) remove() { _ = os.RemoveAll(b.dir) }

// service is a service process started by a benchmark, configured by its
// environment only (nothing is inherited), as a container would be.
type service struct {
	name string
	cmd  *exec.Cmd
	out  *boundedBuffer
	done chan struct{}
}

// startService starts path with exactly env and the arguments.
func startService(name, path string, env map[string]string, args ...string) (*service, error) {
	s := &service{name: name, out: newBoundedBuffer(), done: make(chan struct{})}
	s.cmd = exec.Command(path, args...)
	s.cmd.Env = []string{} // not nil: nil would inherit this process's environment
	for k, v := range env {
		s.cmd.Env = append(s.cmd.Env, k+"="+v)
	}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	// On a failure the benchmark asks for every goroutine's stack
	// (failureLogs); it changes nothing else.
	s.cmd.Env = append(s.cmd.Env, "GOTRACEBACK=all")
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	go func() {
		_ = s.cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

// exited returns an error when the process has ended.
func (s *service) exited() error {
	select {
	case <-s.done:
		return fmt.Errorf("bench: %s exited early (%s):\n%s", s.name, s.cmd.ProcessState, s.out.tail(4000))
	default:
		return nil
	}
}

// cpu is the CPU time the process has used so far (user + system), read
// from /proc; zero when it cannot be read.
func (s *service) cpu() time.Duration { return processCPU(s.cmd.Process.Pid) }

// opsAddr returns the address of the operations endpoint once the
// service logged it (JSON logs, OPS_ADDR with port 0), "" before.
func (s *service) opsAddr() string {
	s.out.mu.Lock()
	defer s.out.mu.Unlock()
	for line := range bytes.SplitSeq(s.out.b, []byte("\n")) {
		if !bytes.Contains(line, []byte(`"operations endpoint listening"`)) {
			continue
		}
		var rec struct {
			Addr string `json:"addr"`
		}
		if json.Unmarshal(line, &rec) == nil && rec.Addr != "" {
			return rec.Addr
		}
	}
	return ""
}

// failureLogs is what a failed run reports of its services: the last lines
// each logged, and a directory holding each one's whole output followed by
// the stacks of all its goroutines — the services still running are ended
// with SIGQUIT for that (GOTRACEBACK=all), so that a stall shows where each
// goroutine waited.
func failureLogs(procs []*service) string {
	var logs []string
	for _, s := range procs {
		logs = append(logs, fmt.Sprintf("--- %s ---\n%s", s.name, s.out.tail(3000)))
	}
	dir, err := os.MkdirTemp("", "jetproj-bench-failure-")
	if err != nil {
		return strings.Join(logs, "\n")
	}
	for _, s := range procs {
		select {
		case <-s.done:
		default:
			_ = s.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-s.done:
			case <-time.After(5 * time.Second):
			}
		}
		s.out.mu.Lock()
		_ = os.WriteFile(filepath.Join(dir, s.name+".log"), s.out.b, 0o644)
		s.out.mu.Unlock()
	}
	return strings.Join(logs, "\n") + "\nwhole output of each service, with its goroutines' stacks at the failure: " + dir
}

// stop ends the process with SIGTERM (SIGKILL after 10 s) and waits for it.
func (s *service) stop() { stopProcess(s.cmd, s.done, 10*time.Second) }

// processCPU reads a process's user and system time from /proc/<pid>/stat.
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	// After the command: state(0) ppid(1) … utime(11) stime(12), in clock
	// ticks (100 per second on Linux).
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

// serverCPU is the CPU time of a server process and its children: the
// live ones, and those that ended (cutime and cstime of the parent), e.g.
// PostgreSQL's postmaster and its backends.
func serverCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	total := processCPU(pid) + childrenCPU(pid)
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		child, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if f := strings.Fields(string(b[i+1:])); i >= 0 && len(f) > 1 && f[1] == strconv.Itoa(pid) {
			total += processCPU(child)
		}
	}
	return total
}

// childrenCPU is cutime + cstime of pid: its children that ended.
func childrenCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 15 {
		return 0
	}
	u, _ := strconv.ParseInt(f[13], 10, 64)
	st, _ := strconv.ParseInt(f[14], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

// scrapeMetrics reads a Prometheus text endpoint and returns the sum of
// every sample of each named metric (labels ignored).
func scrapeMetrics(ctx context.Context, client *http.Client, url string, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: %s: %s", url, resp.Status)
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		if !want[name] {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			continue
		}
		out[name] += v
	}
	return out, sc.Err()
}

// boundedBuffer keeps the last max bytes written to it; several goroutines
// may write at once.
type boundedBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

var _ io.Writer = (*boundedBuffer)(nil)

// newBoundedBuffer keeps the last MiB a process writes.
func newBoundedBuffer() *boundedBuffer { return &boundedBuffer{max: 1 << 20} }

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	if over := len(b.b) - b.max; over > 0 {
		b.b = append(b.b[:0], b.b[over:]...)
	}
	return len(p), nil
}

// tail is the last n bytes written.
func (b *boundedBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.b
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return strings.TrimSpace(string(s))
}
