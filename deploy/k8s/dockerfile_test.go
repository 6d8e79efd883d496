package k8s_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// A Dockerfile, parsed just enough to check it.
type dockerfile struct {
	args   map[string]string // global ARGs and their defaults
	stages []*stage
}

type stage struct {
	name, from string // from: an image, or an earlier stage's name
	instr      []instruction
}

type instruction struct {
	cmd, rest string
	line      int
}

func (d *dockerfile) stage(name string) *stage {
	for _, s := range d.stages {
		if s.name == name {
			return s
		}
	}
	return nil
}

// chain is s and the stages it is built on, s first.
func (d *dockerfile) chain(s *stage) []*stage {
	var out []*stage
	for s != nil && !slices.Contains(out, s) {
		out = append(out, s)
		s = d.stage(s.from)
	}
	return out
}

var fromLine = regexp.MustCompile(`^(?:--platform=\S+\s+)?(\S+)(?:\s+(?i:AS)\s+(\S+))?$`)

func parseDockerfile(b []byte) (*dockerfile, error) {
	d := &dockerfile{args: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	var cur strings.Builder
	n, start := 0, 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if l, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(l + " ")
			continue
		}
		cur.WriteString(line)
		cmd, rest, _ := strings.Cut(cur.String(), " ")
		cur.Reset()
		in := instruction{strings.ToUpper(cmd), strings.TrimSpace(rest), start}
		switch {
		case in.cmd == "FROM":
			m := fromLine.FindStringSubmatch(in.rest)
			if m == nil {
				return nil, fmt.Errorf("line %d: FROM %s", in.line, in.rest)
			}
			from := os.Expand(m[1], func(k string) string { return d.args[k] })
			d.stages = append(d.stages, &stage{name: m[2], from: from})
		case len(d.stages) == 0 && in.cmd == "ARG":
			k, v, _ := strings.Cut(in.rest, "=")
			d.args[k] = v
		case len(d.stages) == 0:
			return nil, fmt.Errorf("line %d: %s before the first FROM", in.line, in.cmd)
		default:
			s := d.stages[len(d.stages)-1]
			s.instr = append(s.instr, in)
		}
	}
	return d, sc.Err()
}

// mainPackages are the programs under services/.
func mainPackages() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(repoRoot, "services"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join(repoRoot, "services", e.Name(), "main.go")); err == nil && bytes.Contains(b, []byte("package main")) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// checkDockerfile checks d and returns each target's entrypoint.
func checkDockerfile(r reporter, d *dockerfile, programs []string) map[string][]string {
	entrypoints := map[string][]string{}
	// The build stage: the Go version of go.mod, static binaries of every program.
	// The repository's go.work adds deploy/: the images build the root
	// module alone, with its own versions.
	_, err := os.Stat(filepath.Join(repoRoot, "go.work"))
	workspace := err == nil
	builds := 0
	for _, s := range d.stages {
		cgoOff, workOff := false, false
		for _, in := range s.instr {
			if in.cmd == "ENV" && regexp.MustCompile(`\bCGO_ENABLED=0\b`).MatchString(in.rest) {
				cgoOff = true
			}
			if in.cmd == "ENV" && regexp.MustCompile(`\bGOWORK=off\b`).MatchString(in.rest) {
				workOff = true
			}
			if in.cmd != "RUN" || !strings.Contains(in.rest, "go build") {
				continue
			}
			builds++
			if !cgoOff && !regexp.MustCompile(`\bCGO_ENABLED=0\b`).MatchString(in.rest) {
				r.Errorf("Dockerfile line %d: go build without CGO_ENABLED=0: the distroless/static images need static binaries", in.line)
			}
			if workspace && !workOff && !regexp.MustCompile(`\bGOWORK=off\b`).MatchString(in.rest) {
				r.Errorf("Dockerfile line %d: go build without GOWORK=off: the images build the root module alone, not the go.work workspace", in.line)
			}
			for _, p := range programs {
				if !strings.Contains(in.rest, "./services/"+p) {
					r.Errorf("Dockerfile line %d: go build does not build ./services/%s", in.line, p)
				}
			}
			image, tag, _ := strings.Cut(s.from, ":")
			if want := goModVersion("go "); image != "golang" || (tag != want && !strings.HasPrefix(tag, want+".") && !strings.HasPrefix(tag, want+"-")) {
				r.Errorf("Dockerfile: builds on %s, want golang:%s (go.mod's go version)", s.from, want)
			}
		}
	}
	if builds != 1 {
		r.Errorf("Dockerfile: %d RUN go build instructions, want one building every program", builds)
	}
	for _, p := range programs {
		s := d.stage(p)
		if s == nil {
			r.Errorf("Dockerfile: no target %s for services/%s", p, p)
			continue
		}
		chain := d.chain(s)
		base := chain[len(chain)-1].from
		if !strings.HasPrefix(base, "gcr.io/distroless/static") && base != "scratch" {
			r.Errorf("Dockerfile target %s: runs on %s, want gcr.io/distroless/static… or scratch", p, base)
		}
		user, entry, copied := "", []string(nil), map[string]string{}
		for i := len(chain) - 1; i >= 0; i-- { // base first, the target last wins
			for _, in := range chain[i].instr {
				switch in.cmd {
				case "USER":
					user = in.rest
				case "ENTRYPOINT":
					entry = nil
					if err := json.Unmarshal([]byte(in.rest), &entry); err != nil {
						r.Errorf("Dockerfile line %d: ENTRYPOINT must be a JSON array (exec form; there is no shell): %v", in.line, err)
					}
				case "COPY":
					f := strings.Fields(in.rest)
					if len(f) == 3 && f[0] == "--from=build" {
						copied[f[2]] = f[1]
					}
				case "RUN":
					r.Errorf("Dockerfile line %d: RUN in target %s, whose base has no shell", in.line, p)
				}
			}
		}
		uid, _, _ := strings.Cut(user, ":")
		if n, err := strconv.Atoi(uid); uid == "" || uid == "root" || (err == nil && n == 0) {
			r.Errorf("Dockerfile target %s: runs as user %q, want a non-root USER", p, user)
		}
		if len(entry) == 0 || copied[entry[0]] != "/out/"+p {
			r.Errorf("Dockerfile target %s: ENTRYPOINT %v is not the binary built from ./services/%s (copied: %v)", p, entry, p, copied)
		}
		entrypoints[p] = entry
	}
	return entrypoints
}

func readDockerfile(t *testing.T) (*dockerfile, []string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := parseDockerfile(b)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	programs, err := mainPackages()
	if err != nil || len(programs) == 0 {
		t.Fatalf("services/: %v %v", programs, err)
	}
	return d, programs
}

// TestDockerfile: a target per program with a main package under
// services/, static, non-root, on a minimal base, built from the root
// module alone; .dockerignore keeps the sources in the build context.
func TestDockerfile(t *testing.T) {
	d, programs := readDockerfile(t)
	checkDockerfile(t, d, programs)

	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	for _, need := range []string{"go.mod", "go.sum", "pkg", "services", "internal"} {
		for _, p := range patterns {
			if ok, _ := filepath.Match(strings.TrimSuffix(p, "/"), need); ok {
				t.Errorf(".dockerignore: %q leaves %s out of the build context", p, need)
			}
		}
	}
	if !slices.Contains(patterns, ".git") {
		t.Error(".dockerignore: .git belongs out of the build context")
	}
	// go.work adds deploy/, which is not in the build context: a build in
	// workspace mode would fail, or build with the versions deploy/'s tests
	// need rather than the root module's.
	if _, err := os.Stat(filepath.Join(repoRoot, "go.work")); err == nil {
		if !slices.Contains(patterns, "go.work") {
			t.Error(".dockerignore: go.work belongs out of the build context (the images build the root module alone)")
		}
	}
}
