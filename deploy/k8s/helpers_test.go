package k8s_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/demo"
	"github.com/jetproj/jetproj/internal/emittersvc"
	"github.com/jetproj/jetproj/internal/feedersvc"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

// repoRoot is the repository, seen from deploy/k8s.
var repoRoot = filepath.Join("..", "..")

// reporter receives the problems a check finds: *testing.T in the tests,
// a recorder in TestChecksCatchBreakage. Checks never stop early, so that
// one run lists every problem.
type reporter interface {
	Errorf(format string, args ...any)
}

// recorder is a reporter that keeps what it is told.
type recorder struct{ errs []string }

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// service is what the tests know of a jetproj program: the variables its
// configuration struct declares and how it loads them.
type service struct {
	vars []string
	// load reads the configuration from env exactly as the program does at
	// start (values parsed and validated, unknown variables with its
	// prefixes refused) and returns its OPS_ADDR ("" without one).
	load func(env map[string]string) (opsAddr string, err error)
	// healthcheck runs `<program> healthcheck` (nil: it has none).
	healthcheck func(env map[string]string) int
}

// demoPrefixes are the prefixes `demo write` checks (services/demo).
var demoPrefixes = []string{"DEMO_", "DATABASE_", "LOG_"}

var services = map[string]service{
	"feeder": {
		vars: varNames(feedersvc.Config{}),
		load: func(env map[string]string) (string, error) {
			c, err := config.Load[feedersvc.Config](config.WithEnvironment(env), config.WithPrefixCheck(feedersvc.Prefixes...))
			return c.Ops.Addr, err
		},
		healthcheck: func(env map[string]string) int {
			return feedersvc.Main(context.Background(), []string{"healthcheck"}, env, io.Discard, io.Discard)
		},
	},
	"projector": {
		vars: varNames(projectorsvc.Config{}),
		load: func(env map[string]string) (string, error) {
			c, err := config.Load[projectorsvc.Config](config.WithEnvironment(env), config.WithPrefixCheck(projectorsvc.Prefixes...))
			return c.Ops.Addr, err
		},
		healthcheck: func(env map[string]string) int {
			return projectorsvc.Main(context.Background(), []string{"healthcheck"}, env, io.Discard, io.Discard, nil)
		},
	},
	"emitter": {
		vars: varNames(emittersvc.Config{}),
		load: func(env map[string]string) (string, error) {
			c, err := config.Load[emittersvc.Config](config.WithEnvironment(env), config.WithPrefixCheck(emittersvc.Prefixes...))
			return c.Ops.Addr, err
		},
		healthcheck: func(env map[string]string) int {
			return emittersvc.Main(context.Background(), []string{"healthcheck"}, env, io.Discard, io.Discard)
		},
	},
	"demo": {
		vars: varNames(demo.WriterConfig{}),
		load: func(env map[string]string) (string, error) {
			_, err := config.Load[demo.WriterConfig](config.WithEnvironment(env), config.WithPrefixCheck(demoPrefixes...))
			return "", err
		},
	},
}

// jetprojServices are the services deployed on Kubernetes.
var jetprojServices = []string{"feeder", "projector", "emitter"}

func varNames(v any) []string {
	vars, err := config.Vars(v)
	if err != nil {
		panic(err)
	}
	var out []string
	for _, x := range vars {
		out = append(out, x.Key)
	}
	return out
}

// checkVars reports every variable in env that svc does not declare.
func checkVars(r reporter, svc, where string, env map[string]string) {
	for _, k := range sortedKeys(env) {
		if !slices.Contains(services[svc].vars, k) {
			r.Errorf("%s: %s sets %s, which the %s's configuration does not declare (known: %s)",
				svc, where, k, svc, strings.Join(services[svc].vars, " "))
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// strictDecode decodes one manifest into v, refusing unknown fields.
func strictDecode(doc []byte, v any) error {
	return yaml.UnmarshalStrict(doc, v)
}

// selects reports whether a non-empty selector matches labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// registeredMetric finds the jetproj metric names that the code registers:
// Name: "jetproj_…" in prometheus.*Opts of the non-test Go files under pkg
// and services.
var registeredMetric = regexp.MustCompile(`Name:\s*"(jetproj_[a-z0-9_]+)"`)

// jetprojMetric finds jetproj metric names in PromQL.
var jetprojMetric = regexp.MustCompile(`\bjetproj_[a-z0-9_]+`)

func registeredMetrics() ([]string, error) {
	var names []string
	for _, dir := range []string{"pkg", "internal", "services"} {
		err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range registeredMetric.FindAllSubmatch(b, -1) {
				names = append(names, string(m[1]))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return names, nil
}

// checkQuery reports a PromQL expression that names no jetproj metric, one
// the code does not register, or unbalanced brackets.
func checkQuery(r reporter, where, expr string, registered []string) {
	names := jetprojMetric.FindAllString(expr, -1)
	if len(names) == 0 {
		r.Errorf("%s: %q uses no jetproj metric", where, expr)
	}
	for _, n := range names {
		base := n
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if s, ok := strings.CutSuffix(n, suffix); ok && slices.Contains(registered, s) {
				base = s // a histogram's series
			}
		}
		if !slices.Contains(registered, base) {
			r.Errorf("%s: %q uses %s, which no Go source under pkg/, internal/ or services/ registers (registered: %s)",
				where, expr, n, strings.Join(registered, " "))
		}
	}
	depth := map[rune]int{}
	pairs := map[rune]rune{')': '(', ']': '[', '}': '{'}
	for _, c := range expr {
		switch c {
		case '(', '[', '{':
			depth[c]++
		case ')', ']', '}':
			depth[pairs[c]]--
			if depth[pairs[c]] < 0 {
				r.Errorf("%s: %q: unbalanced %c", where, expr, c)
				return
			}
		}
	}
	for c, n := range depth {
		if n != 0 {
			r.Errorf("%s: %q: unbalanced %c", where, expr, c)
		}
	}
}

// goModVersion is the major.minor version that follows prefix in go.mod
// (a require line, or "go " for the language version); "unknown" without.
func goModVersion(prefix string) string {
	b, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		return "unknown"
	}
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(prefix) + `([0-9]+)\.([0-9]+)`).FindSubmatch(b)
	if m == nil {
		return "unknown"
	}
	return string(m[1]) + "." + string(m[2])
}

func readFile(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	return string(b), err
}
