package main

import (
	"bytes"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/jetproj/jetproj/internal/config"
	"github.com/jetproj/jetproj/internal/demo"
	"github.com/jetproj/jetproj/internal/emitter"
	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/opsserver"
	"github.com/jetproj/jetproj/internal/pgpool"
	"github.com/jetproj/jetproj/internal/process"
	"github.com/jetproj/jetproj/internal/statuspage"
	"github.com/jetproj/jetproj/pkg/projectorsvc"
)

// A setting's default is written once, in its envDefault tag: the tables
// show it, config.Load applies it to a variable that is not set, and
// config.FillDefaults to a zero field of a configuration built in Go. What
// the tags cannot say themselves is checked here, for every section of the
// documentation: that the tags parse, what the code gives a configuration
// built without the settings, and every default a doc text states.

// zeroConfigs says, per section, what the code does with a zero
// configuration. A new section must be added here.
var zeroConfigs = map[string]func(t *testing.T){
	"feeder": func(t *testing.T) {
		got, want := feeder.Config{}.Defaults(), config.Defaults[feeder.Config]()
		want.Instance = process.Instance()
		same(t, got, want)
	},
	"emitter": func(t *testing.T) {
		got, want := emitter.Config{}.Defaults(), config.Defaults[emitter.Config]()
		want.Instance = process.Instance()
		same(t, got, want)
	},
	// pgpool.Open, opsserver and statuspage fill a setting left zero with
	// config.Defaults: one source.
	"database":   tagsParse[pgpool.Config](),
	"ops":        tagsParse[opsserver.Config](),
	"statuspage": tagsParse[statuspage.Config](),
	// The zero natsconn.Config is documented to differ: an embedded server
	// on a random port in a temporary directory (tests, Go programs), where
	// the environment's defaults give the demo's fixed port and directory.
	"nats": tagsParse[natsconn.Config](),
	// projector.New's defaults for the Options these settings fill are
	// checked in pkg/projector (TestOptionsDefaultsAreTheService).
	"projector": tagsParse[projectorsvc.Settings](),
	"logging": func(t *testing.T) {
		// NewLogger treats an empty format and level as the defaults.
		var zero, def bytes.Buffer
		process.NewLogger(&zero, process.LogConfig{}).Debug("hidden")
		process.NewLogger(&zero, process.LogConfig{}).Info("shown", "k", "v")
		process.NewLogger(&def, config.Defaults[process.LogConfig]()).Debug("hidden")
		process.NewLogger(&def, config.Defaults[process.LogConfig]()).Info("shown", "k", "v")
		strip := regexp.MustCompile(`time=\S+ `)
		if z, d := strip.ReplaceAllString(zero.String(), ""), strip.ReplaceAllString(def.String(), ""); z != d {
			t.Errorf("NewLogger with a zero LogConfig logs\n%s, with the defaults\n%s", z, d)
		}
	},
}

// TestZeroConfigurationsGetTheDefaults: what the code makes of a
// configuration built without settings is what the environment's defaults
// give (or differs as documented).
func TestZeroConfigurationsGetTheDefaults(t *testing.T) {
	t.Parallel()
	for name := range sections {
		check, ok := zeroConfigs[name]
		if !ok {
			t.Errorf("section %s: add to zeroConfigs what the code does with a zero %T", name, sections[name])
			continue
		}
		t.Run(name, check)
	}
	t.Run("demo writer", tagsParse[demo.WriterConfig]())
}

// defaultClaims check the doc texts that state a default. A doc that
// states one not listed here fails TestDocumentedDefaults: add a check.
var defaultClaims = map[string]func(t *testing.T, v config.Var){
	"FEEDER_ON_OVERSIZED": wordBeforeDefault,
	"FEEDER_INSTANCE": func(t *testing.T, v config.Var) {
		hostAndPID(t, v)
		if got := (feeder.Config{}).Defaults().Instance; got != process.Instance() {
			t.Errorf("%s: default %q, want host name and process id %q", v.Key, got, process.Instance())
		}
	},
	"EMITTER_INSTANCE": func(t *testing.T, v config.Var) {
		hostAndPID(t, v)
		if got := (emitter.Config{}).Defaults().Instance; got != process.Instance() {
			t.Errorf("%s: default %q, want host name and process id %q", v.Key, got, process.Instance())
		}
	},
	// projector.New's default Replica: TestOptionsDefaultsAreTheService.
	"PROJECTOR_REPLICA": hostAndPID,
	"NATS_EMBEDDED_MAX_PAYLOAD": func(t *testing.T, v config.Var) {
		if !strings.Contains(v.Doc, "server default (1 MiB)") || server.MAX_PAYLOAD_SIZE != 1<<20 {
			t.Errorf("%s: %q, while the server's default max payload is %d bytes", v.Key, v.Doc, server.MAX_PAYLOAD_SIZE)
		}
	},
	// "the nats CLI reaches the demo with its defaults": the CLI's, 4222.
	"NATS_EMBEDDED_PORT": func(t *testing.T, v config.Var) {
		if v.Default != "4222" {
			t.Errorf("%s: default %q, but the nats CLI's default port is 4222", v.Key, v.Default)
		}
	},
}

// TestDocumentedDefaults checks every default a doc text states against
// the tag or the code.
func TestDocumentedDefaults(t *testing.T) {
	t.Parallel()
	all := map[string]any{"demo writer": demo.WriterConfig{}}
	for name, v := range sections {
		all[name] = v
	}
	for name, s := range all {
		vars, err := config.Vars(s)
		if err != nil {
			t.Fatalf("section %s: %v", name, err)
		}
		for _, v := range vars {
			if !strings.Contains(strings.ToLower(v.Doc), "default") {
				continue
			}
			check, ok := defaultClaims[v.Key]
			if !ok {
				t.Errorf("%s: its doc states a default (%q): add a check to defaultClaims", v.Key, v.Doc)
				continue
			}
			check(t, v)
		}
	}
}

// wordBeforeDefault: "stop (default; …)" names the tag's default.
func wordBeforeDefault(t *testing.T, v config.Var) {
	m := regexp.MustCompile(`(\S+) \(default\b`).FindStringSubmatch(v.Doc)
	if m == nil || m[1] != v.Default {
		t.Errorf("%s: doc %q; the tag's default is %q", v.Key, v.Doc, v.Default)
	}
}

func hostAndPID(t *testing.T, v config.Var) {
	if v.HasDefault || !strings.Contains(v.Doc, "(default: host name and process id)") {
		t.Errorf("%s: doc %q, tag default %q: want no tag default and the doc saying (default: host name and process id)", v.Key, v.Doc, v.Default)
	}
}

// tagsParse checks that config.Defaults can read T's tags.
func tagsParse[T any]() func(t *testing.T) {
	return func(t *testing.T) {
		defer func() {
			if r := recover(); r != nil {
				t.Error(r)
			}
		}()
		config.Defaults[T]()
	}
}

func same[T any](t *testing.T, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the code's defaults differ from the tags':\n got %+v\nwant %+v", got, want)
	}
}
