package grafana

import (
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jetproj/jetproj/internal/opsserver"
)

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type dashboard struct {
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// metricName is a token of a query that names a metric of ours or of the
// Go and process collectors (label names and functions do not match).
var metricName = regexp.MustCompile(`\b(?:jetproj|go|process)_[a-z0-9_]+\b`)

// registered lists the metrics the code registers: every jetproj_* name in
// a metric's options in the services' Go code (a vector with no label
// values yet is not gathered, so reading a registry would miss some), and
// what the registry every service starts from gathers (Go runtime and
// process collectors).
func registered(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	optName := regexp.MustCompile(`Name:\s*"(jetproj_[a-z0-9_]+)"`)
	histogram := regexp.MustCompile(`NewHistogram(?:Vec)?\(prometheus\.HistogramOpts\{\s*Name:\s*"(jetproj_[a-z0-9_]+)"`)
	walk := func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range optName.FindAllStringSubmatch(string(b), -1) {
			out[m[1]] = path
		}
		for _, m := range histogram.FindAllStringSubmatch(string(b), -1) {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				out[m[1]+s] = path
			}
		}
		return nil
	}
	for _, dir := range []string{"../../pkg", "../../internal"} {
		if err := filepath.WalkDir(dir, walk); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := opsserver.NewRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		out[mf.GetName()] = "opsserver.NewRegistry"
	}
	if len(out) < 20 {
		t.Fatalf("found only %d registered metrics: %v", len(out), out)
	}
	return out
}

// Every query of the dashboard (panels and variables) names at least one
// metric, and every metric it names is one the code registers; panel ids
// are unique.
func TestDashboardQueriesNameRegisteredMetrics(t *testing.T) {
	b, err := os.ReadFile("jetproj-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("jetproj-dashboard.json: %v", err)
	}
	if d.UID == "" || len(d.Panels) == 0 {
		t.Fatal("jetproj-dashboard.json: no uid or no panels")
	}
	known := registered(t)
	var queries []string
	ids := map[int]string{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if other, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share the id %d", other, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, q := range p.Targets {
				queries = append(queries, q.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		switch q := v.Query.(type) {
		case map[string]any:
			if s, ok := q["query"].(string); ok && strings.Contains(s, "(") {
				queries = append(queries, s)
			}
		case string:
			if strings.Contains(q, "(") {
				queries = append(queries, q)
			}
		}
	}
	used := map[string]bool{}
	for _, q := range queries {
		names := metricName.FindAllString(q, -1)
		if len(names) == 0 {
			t.Errorf("query names no metric: %s", q)
		}
		for _, n := range names {
			used[n] = true
			if _, ok := known[n]; !ok {
				t.Errorf("query names %s, which the code does not register: %s", n, q)
			}
		}
	}
	// The metrics operators watch most are on it.
	for _, n := range []string{"jetproj_feeder_lag", "jetproj_projector_lag", "jetproj_projector_partitions_parked",
		"jetproj_emitter_stalled_subjects", "jetproj_projector_messages_total", "jetproj_feeder_events_published_total"} {
		if !used[n] {
			t.Errorf("the dashboard does not show %s", n)
		}
	}
	t.Logf("%d queries over %d metrics: %v", len(queries), len(used), slices.Sorted(maps.Keys(used)))
}
