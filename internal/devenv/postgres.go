package devenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresOptions configure a throwaway PostgreSQL cluster. The zero value is
// usable.
type PostgresOptions struct {
	// Dir is the parent of the data and socket directories. Defaults to a new
	// temporary directory that Close removes.
	Dir string
	// Port defaults to a free loopback port.
	Port int
	// BinDir holds initdb and postgres. Defaults to $PG_BIN, then the highest
	// /usr/lib/postgresql/*/bin, then the directory of initdb on $PATH.
	BinDir string
	// Durable keeps fsync on. Off by default: the cluster is thrown away.
	Durable bool
	// Settings are extra server settings (name → value), passed as -c.
	Settings map[string]string
}

// Postgres is a PostgreSQL cluster owned by this process.
type Postgres struct {
	opts    PostgresOptions
	dataDir string
	sockDir string
	logPath string
	ownDir  bool
	cred    *syscall.Credential

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartPostgres initialises a new cluster and starts it. As root, initdb and
// postgres run as the "postgres" user, which then owns the directories.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	bin, err := findPGBin(opts.BinDir)
	if err != nil {
		return nil, err
	}
	opts.BinDir = bin
	if opts.Port == 0 {
		if opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	p := &Postgres{opts: opts}
	if opts.Dir == "" {
		dir, err := os.MkdirTemp("", "jetproj-pg-")
		if err != nil {
			return nil, fmt.Errorf("devenv: postgres dir: %w", err)
		}
		p.opts.Dir, p.ownDir = dir, true
	}
	if err := os.MkdirAll(p.opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("devenv: postgres dir: %w", err)
	}
	p.dataDir = filepath.Join(p.opts.Dir, "data")
	p.sockDir = filepath.Join(p.opts.Dir, "sock")
	p.logPath = filepath.Join(p.opts.Dir, "postgres.log")
	if err := os.MkdirAll(p.sockDir, 0o755); err != nil {
		return nil, fmt.Errorf("devenv: postgres socket dir: %w", err)
	}
	if os.Geteuid() == 0 {
		if err := p.dropRoot(); err != nil {
			p.cleanup()
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(p.dataDir, "PG_VERSION")); err != nil {
		if err := p.initdb(ctx); err != nil {
			p.cleanup()
			return nil, err
		}
	}
	if err := p.Start(ctx); err != nil {
		p.cleanup()
		return nil, err
	}
	return p, nil
}

func (p *Postgres) dropRoot() error {
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("devenv: running as root needs a postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	for _, d := range []string{p.opts.Dir, p.sockDir} {
		if err := os.Chown(d, uid, gid); err != nil {
			return fmt.Errorf("devenv: chown %s: %w", d, err)
		}
	}
	// The postgres user must be able to reach the directory.
	for d := filepath.Dir(p.opts.Dir); d != "/" && d != "."; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("devenv: make %s traversable: %w", d, err)
			}
		}
	}
	return nil
}

func (p *Postgres) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(p.opts.BinDir, name), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Dir = p.opts.Dir
	return cmd
}

func (p *Postgres) initdb(ctx context.Context) error {
	cmd := p.command(ctx, "initdb", "-D", p.dataDir, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--no-sync", "--no-instructions")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("devenv: initdb: %w\n%s", err, out)
	}
	return nil
}

// Start starts the server (again) and waits until it accepts connections.
func (p *Postgres) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return nil
	}
	args := []string{"-D", p.dataDir, "-k", p.sockDir, "-p", strconv.Itoa(p.opts.Port),
		"-h", "127.0.0.1", "-c", "max_connections=300", "-c", "shared_buffers=128MB"}
	if !p.opts.Durable {
		args = append(args, "-c", "fsync=off", "-c", "full_page_writes=off")
	}
	keys := make([]string, 0, len(p.opts.Settings))
	for k := range p.opts.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+p.opts.Settings[k])
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("devenv: postgres log: %w", err)
	}
	// The process outlives ctx: it is stopped by Stop, Kill or Close.
	cmd := p.command(context.WithoutCancel(ctx), "postgres", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("devenv: start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return p.waitReady(ctx, done)
}

func (p *Postgres) waitReady(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	backoff := 5 * time.Millisecond
	for {
		conn, err := pgx.Connect(ctx, p.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-exited:
			p.cmd = nil
			return fmt.Errorf("devenv: postgres exited at start:\n%s", p.logTail())
		case <-ctx.Done():
			return fmt.Errorf("devenv: postgres not ready: %w (last error: %v)\n%s", ctx.Err(), err, p.logTail())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

func (p *Postgres) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

// URL returns a connection string for database db.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.opts.Port, db)
}

// Port is the TCP port the server listens on.
func (p *Postgres) Port() int { return p.opts.Port }

// CreateDatabase creates a new database and returns its URL.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("devenv: connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("devenv: create database %s: %w", name, err)
	}
	return p.URL(name), nil
}

// PID is the postmaster's process id (0 when stopped): benchmarks read
// the CPU time of the server and its backends from it.
func (p *Postgres) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Stop shuts the server down (fast shutdown: open transactions roll back)
// and waits for it to exit. Safe to call when stopped.
func (p *Postgres) Stop(ctx context.Context) error { return p.signal(ctx, syscall.SIGINT) }

// Kill ends the server with SIGKILL, as a crash would; Start recovers it.
func (p *Postgres) Kill(ctx context.Context) error { return p.signal(ctx, syscall.SIGKILL) }

func (p *Postgres) signal(ctx context.Context, sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	pid := p.cmd.Process.Pid
	// Each backend is its own process group leader and outlives a killed
	// postmaster for a moment, keeping the shared memory: a crash kills them
	// all, and Stop and Kill return only when every one of them is gone.
	pids := append(childPIDs(pid), pid)
	if sig == syscall.SIGKILL {
		for _, c := range pids {
			_ = syscall.Kill(c, syscall.SIGKILL)
		}
	} else {
		_ = syscall.Kill(pid, sig)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-p.done
	}
	p.cmd = nil
	for _, c := range pids {
		for syscall.Kill(c, 0) == nil && !isZombie(c) {
			select {
			case <-ctx.Done():
				return fmt.Errorf("devenv: postgres process %d still running: %w", c, ctx.Err())
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
	return nil
}

// childPIDs lists the direct children of pid from /proc.
func childPIDs(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _ := procStat(c); ppid == pid {
			out = append(out, c)
		}
	}
	return out
}

func isZombie(pid int) bool {
	_, state := procStat(pid)
	return state == "Z" || state == ""
}

// procStat returns the parent pid and state of a process.
func procStat(pid int) (ppid int, state string) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, ""
	}
	// pid (comm) state ppid ...; comm may hold spaces, so cut at the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, ""
	}
	ppid, _ = strconv.Atoi(f[1])
	return ppid, f[0]
}

// Close stops the server and removes the directory StartPostgres created.
func (p *Postgres) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := p.Stop(ctx)
	p.cleanup()
	return err
}

func (p *Postgres) cleanup() {
	if p.ownDir {
		_ = os.RemoveAll(p.opts.Dir)
	}
}

func findPGBin(dir string) (string, error) {
	has := func(d string) bool {
		_, err := os.Stat(filepath.Join(d, "postgres"))
		_, err2 := os.Stat(filepath.Join(d, "initdb"))
		return err == nil && err2 == nil
	}
	if dir != "" {
		if has(dir) {
			return dir, nil
		}
		return "", fmt.Errorf("%w: not in %s", ErrNoPostgres, dir)
	}
	if d := os.Getenv("PG_BIN"); d != "" {
		return findPGBin(d)
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(matches, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(matches[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(matches[j])))
		return vi > vj
	})
	for _, m := range matches {
		if has(m) {
			return m, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", ErrNoPostgres
}
