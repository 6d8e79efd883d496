package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/contract"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
	"github.com/jetproj/jetproj/pkg/subject"
)

// memoryProjection is the memory part's projection.
const memoryProjection = "bench_memory"

// childTimeout bounds one child run of the memory part.
const childTimeout = 5 * time.Minute

// MemoryRun is one child run of the memory part: a projector process that
// loaded Partitions known partitions (all 64 slots).
type MemoryRun struct {
	Partitions int
	// Limit is the child's GOMEMLIMIT ("" for none).
	Limit string
	// Load is the time from Run until every slot was loaded.
	Load time.Duration
	// RSS is VmRSS once loaded, Peak VmHWM (the highest RSS so far).
	RSS, Peak uint64
	// HeapInuse is the Go heap in use once loaded (runtime.MemStats).
	HeapInuse uint64
	// LiveHeap is the heap after a GC, and RSSAfterGC the RSS after
	// debug.FreeOSMemory returned the free pages.
	LiveHeap, RSSAfterGC uint64
}

func (m MemoryRun) setting() string {
	if m.Limit == "" {
		return "default GC"
	}
	return "GOMEMLIMIT=" + m.Limit
}

// memory writes the records of o.Partitions partitions into the state
// bucket of a projection, then starts a projector for it in a child process
// (once as it is, once with GOMEMLIMIT) and reads the child's memory once
// it has loaded every slot.
func (b *projectorBench) memory(ctx context.Context, res *ProjectorResult) error {
	o := b.o
	if _, _, err := feeder.EnsureStream(ctx, b.js, feeder.Config{}.Defaults()); err != nil {
		return err
	}
	run, err := writePartitions(ctx, b.t, b.js, memoryProjection, o.Partitions, o.Seed)
	if err != nil {
		return err
	}
	fmt.Fprintf(b.out, "memory    wrote %d partition records with PublishAsync  %s\n", o.Partitions, runLine(run))
	limits := []string{""}
	if o.MemoryLimit != "off" {
		limits = append(limits, o.MemoryLimit)
	}
	for _, limit := range limits {
		m, err := b.memoryChild(ctx, limit)
		if err != nil {
			return fmt.Errorf("memory (%s): %w", MemoryRun{Limit: limit}.setting(), err)
		}
		res.Memory = append(res.Memory, m)
		fmt.Fprintf(b.out, "memory    %-22s %d partitions loaded in %.1fs  RSS %s  peak %s  heap in use %s  after GC: heap %s, RSS %s\n",
			m.setting(), m.Partitions, m.Load.Seconds(), mb(m.RSS), mb(m.Peak), mb(m.HeapInuse), mb(m.LiveHeap), mb(m.RSSAfterGC))
	}
	return dropProjection(ctx, b.js, memoryProjection)
}

// writePartitions fills the KV state bucket of projection name with n
// wallet partitions' records, as the projector writes them (Record JSON
// with subject, positions and a wallet balance state, key
// p.<slot>.<partition key>, slot = projector.SlotOf(key, 64)), and sets
// every slot's watermark to the last sequence of EVENTS so that a
// projector resumes at the end of the stream, as a caught-up one would.
// Records are published with PublishAsync to $KV.<bucket>.<key>.
func writePartitions(ctx context.Context, t Target, js jetstream.JetStream, name string, n int, seed uint64) (Run, error) {
	watermark, err := streamLastSeq(ctx, js, eventsStream)
	if err != nil {
		return Run{}, err
	}
	bucket := contract.StateBucket(name)
	if err := deleteBucket(ctx, js, bucket); err != nil {
		return Run{}, err
	}
	if err := projector.NewKVStore(js, bucket, 1).Init(ctx); err != nil {
		return Run{}, err
	}
	nc, err := nats.Connect(t.NATSURL, nats.Name("jetproj-bench-records"))
	if err != nil {
		return Run{}, fmt.Errorf("bench: nats: %w", err)
	}
	defer nc.Close()
	var (
		mu     sync.Mutex
		pubErr error
	)
	pjs, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(publishInFlight),
		jetstream.WithPublishAsyncTimeout(30*time.Second),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			mu.Lock()
			defer mu.Unlock()
			if pubErr == nil {
				pubErr = fmt.Errorf("bench: write %s: %w", m.Subject, err)
			}
		}))
	if err != nil {
		return Run{}, err
	}
	d := newDomain(seed + 1000)
	prefix := contract.KVSubjectPrefix(bucket)
	now := time.Now().UTC()
	start := time.Now()
	for i := range n {
		id := d.walletID()
		key := projection.AggregateKey(aggregateWallet, id)
		if !kvSafe(key) {
			return Run{}, fmt.Errorf("bench: partition key %q needs KV key encoding", key)
		}
		slot := projector.SlotOf(key, 64)
		rec := projector.Record{Key: key, Subject: subject.Event(aggregateWallet, id), Seq: uint64(i + 1), Position: int64(i + 1),
			State:   fmt.Appendf(nil, `{"owner":"owner-%d","cents":%d,"events":3}`, d.rng.IntN(1_000_000), d.rng.IntN(10_000_000)),
			Updated: now}
		data, err := json.Marshal(rec)
		if err != nil {
			return Run{}, err
		}
		if _, err := pjs.PublishAsync(prefix+"p."+strconv.Itoa(slot)+"."+key, data, jetstream.WithStallWait(time.Minute)); err != nil {
			return Run{}, fmt.Errorf("bench: write partition %d: %w", i, err)
		}
	}
	for slot := range 64 {
		if _, err := pjs.PublishAsync(prefix+"w."+strconv.Itoa(slot), []byte(strconv.FormatUint(watermark, 10))); err != nil {
			return Run{}, err
		}
	}
	select {
	case <-pjs.PublishAsyncComplete():
	case <-ctx.Done():
		return Run{}, ctx.Err()
	}
	run := Run{Events: n, Elapsed: time.Since(start)}
	mu.Lock()
	err = pubErr
	mu.Unlock()
	if err != nil {
		return run, err
	}
	if got, err := streamMsgs(ctx, js, contract.KVStream(bucket)); err != nil || got != uint64(n+64) {
		return run, fmt.Errorf("bench: bucket %s holds %d entries, want %d (%v)", bucket, got, n+64, err)
	}
	return run, nil
}

// kvSafe reports whether key is a KV key token as it is (the projector
// encodes other bytes).
func kvSafe(key string) bool {
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '/') {
			return false
		}
	}
	return key != ""
}

// childReport is a line the child writes on its standard output.
type childReport struct {
	Event       string  `json:"event"` // "loaded", then "gc"
	Slots       int     `json:"slots"`
	Partitions  int     `json:"partitions"`
	LoadSeconds float64 `json:"load_seconds"`
	HeapInuse   uint64  `json:"heap_inuse"`
	HeapAlloc   uint64  `json:"heap_alloc"`
	Sys         uint64  `json:"sys"`
}

// memoryChild runs the child once, with GOMEMLIMIT set to limit unless it
// is empty, and reads its RSS once it has loaded every slot, then again
// after it collected its garbage and returned free memory.
func (b *projectorBench) memoryChild(ctx context.Context, limit string) (MemoryRun, error) {
	o := b.o
	m := MemoryRun{Partitions: o.Partitions, Limit: limit}
	ctx, cancel := context.WithTimeout(ctx, childTimeout)
	defer cancel()
	args := append(append([]string(nil), o.Child[1:]...), "-nats", b.t.NATSURL, "-name", memoryProjection, "-partitions", strconv.Itoa(o.Partitions))
	if o.CPUProfileDir != "" {
		file := "memory-default.pprof"
		if limit != "" {
			file = "memory-gomemlimit.pprof"
		}
		args = append(args, "-memprofile", filepath.Join(o.CPUProfileDir, file))
	}
	cmd := exec.CommandContext(ctx, o.Child[0], args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOMEMLIMIT=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, o.ChildEnv...)
	if limit != "" {
		cmd.Env = append(cmd.Env, "GOMEMLIMIT="+limit)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 10 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return m, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return m, err
	}
	if err := cmd.Start(); err != nil {
		return m, fmt.Errorf("bench: start child: %w", err)
	}
	fail := func(err error) (MemoryRun, error) {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		werr := cmd.Wait()
		return m, fmt.Errorf("%w (child: %v; stderr: %s)", err, werr, strings.TrimSpace(stderr.String()))
	}
	lines := bufio.NewScanner(stdout)
	read := func(event string) (childReport, error) {
		var r childReport
		if !lines.Scan() {
			return r, fmt.Errorf("bench: child ended before reporting %q: %v", event, lines.Err())
		}
		if err := json.Unmarshal(lines.Bytes(), &r); err != nil || r.Event != event {
			return r, fmt.Errorf("bench: child said %q, want a %q report", lines.Text(), event)
		}
		return r, nil
	}
	loaded, err := read("loaded")
	if err != nil {
		return fail(err)
	}
	if m.RSS, m.Peak, err = procMemory(cmd.Process.Pid); err != nil {
		return fail(err)
	}
	m.Load, m.HeapInuse = time.Duration(loaded.LoadSeconds*float64(time.Second)), loaded.HeapInuse
	if loaded.Partitions != o.Partitions {
		return fail(fmt.Errorf("bench: child knows %d partitions, want %d", loaded.Partitions, o.Partitions))
	}
	if _, err := io.WriteString(stdin, "gc\n"); err != nil {
		return fail(err)
	}
	gc, err := read("gc")
	if err != nil {
		return fail(err)
	}
	m.LiveHeap = gc.HeapAlloc
	if m.RSSAfterGC, _, err = procMemory(cmd.Process.Pid); err != nil {
		return fail(err)
	}
	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		return m, fmt.Errorf("bench: child: %w (stderr: %s)", err, strings.TrimSpace(stderr.String()))
	}
	return m, nil
}

// procMemory reads a process's resident set size and its peak from
// /proc/<pid>/status.
func procMemory(pid int) (rss, peak uint64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("bench: process memory: %w", err)
	}
	for line := range strings.Lines(string(data)) {
		name, value, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("bench: %s: %q", name, value)
		}
		if name == "VmRSS" {
			rss = kb << 10
		} else {
			peak = kb << 10
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("bench: no VmRSS in /proc/<pid>/status")
	}
	return rss, peak, nil
}

// ProjectorChild is the memory part's child process: it runs one replica
// of the wallet projection named by -name against -nats, waits until it
// holds all 64 slots and knows -partitions partitions, and writes a JSON
// "loaded" report with its Go memory statistics on stdout. Each "gc" line
// on stdin makes it collect garbage, return free memory to the system and
// write a "gc" report (and, with -memprofile, a heap profile); at the end
// of stdin it stops.
func ProjectorChild(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("projector-child", flag.ContinueOnError)
	url := fs.String("nats", "", "NATS URL")
	name := fs.String("name", memoryProjection, "projection name")
	partitions := fs.Int("partitions", 0, "partitions to wait for")
	memprofile := fs.String("memprofile", "", "file for a heap profile after each gc request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nc, err := nats.Connect(*url, nats.Name("jetproj-bench-child"))
	if err != nil {
		return fmt.Errorf("bench: nats: %w", err)
	}
	defer nc.Close()
	def := walletProjection(*name, aggregateWallet, nil, 0)
	p, err := projector.New(nc, projector.Options{Replica: *name + "-child", Logger: slog.New(slog.DiscardHandler)}, def)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- p.Run(rctx) }()
	defer func() {
		cancel()
		<-done
	}()

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var st projector.RunnerStatus
	for loaded := false; !loaded; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-done:
			done <- err
			return fmt.Errorf("bench: projector stopped: %v", err)
		case <-tick.C:
		}
		if s := p.Statuses(); len(s) == 1 {
			st = s[0]
			loaded = len(st.Slots) == 64 && st.Partitions >= *partitions && st.State == "running"
		}
	}
	report := func(event string) error {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b, err := json.Marshal(childReport{Event: event, Slots: len(st.Slots), Partitions: st.Partitions,
			LoadSeconds: time.Since(start).Seconds(), HeapInuse: ms.HeapInuse, HeapAlloc: ms.HeapAlloc, Sys: ms.Sys})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	if err := report("loaded"); err != nil {
		return err
	}
	lines := bufio.NewScanner(stdin)
	for lines.Scan() {
		if lines.Text() != "gc" {
			return fmt.Errorf("bench: unknown request %q", lines.Text())
		}
		runtime.GC()
		debug.FreeOSMemory()
		if *memprofile != "" {
			if err := writeHeapProfile(*memprofile); err != nil {
				return err
			}
		}
		if err := report("gc"); err != nil {
			return err
		}
	}
	return lines.Err()
}

func writeHeapProfile(file string) error {
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("bench: heap profile: %w", err)
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("bench: heap profile: %w", err)
	}
	return f.Close()
}
