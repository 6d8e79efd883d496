package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/config"
)

type db struct {
	URL     string        `env:"URL" doc:"Connection string."`
	Timeout time.Duration `env:"TIMEOUT" envDefault:"5s"`
}

func (d db) Validate() []string {
	if d.Timeout < 0 {
		return []string{"TIMEOUT: must not be negative"}
	}
	return nil
}

type app struct {
	Name     string        `env:"APP_NAME,required" doc:"Service name."`
	Batch    int           `env:"APP_BATCH" envDefault:"500"`
	Poll     time.Duration `env:"APP_POLL" envDefault:"1s"`
	Subjects []string      `env:"APP_SUBJECTS" envSeparator:","`
	Ports    []int         `env:"APP_PORTS" envSeparator:";"`
	Debug    bool          `env:"APP_DEBUG"`
	Primary  db            `envPrefix:"APP_PRIMARY_"`
	Replica  *db           `envPrefix:"APP_REPLICA_" env:",init"`
	Ignored  string        `env:"-"`
	internal string        //nolint:unused // unexported: Vars and Load must leave it alone
}

func (a *app) Validate() []string {
	var p []string
	if a.Batch <= 0 {
		p = append(p, "APP_BATCH: must be positive")
	}
	if a.Name == "forbidden" {
		p = append(p, "APP_NAME: must not be forbidden")
	}
	return p
}

func load(t *testing.T, environ map[string]string, opts ...config.Option) (app, error) {
	t.Helper()
	return config.Load[app](append([]config.Option{config.WithEnvironment(environ)}, opts...)...)
}

func problems(t *testing.T, err error) []string {
	t.Helper()
	if !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %T, want *config.Error", err)
	}
	return ce.Problems
}

func TestLoadDefaultsAndValues(t *testing.T) {
	t.Parallel()
	got, err := load(t, map[string]string{
		"APP_NAME":              "feeder",
		"APP_SUBJECTS":          "a,b,c",
		"APP_PORTS":             "1;2",
		"APP_DEBUG":             "true",
		"APP_PRIMARY_URL":       "postgres://p",
		"APP_REPLICA_TIMEOUT":   "250ms",
		"APP_PRIMARY_TIMEOUT":   "", // empty falls back to the default
		"SOMETHING_ELSE_ENTIRE": "x",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := app{
		Name: "feeder", Batch: 500, Poll: time.Second,
		Subjects: []string{"a", "b", "c"}, Ports: []int{1, 2}, Debug: true,
		Primary: db{URL: "postgres://p", Timeout: 5 * time.Second},
		Replica: &db{Timeout: 250 * time.Millisecond},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v (replica %+v)\nwant %+v (replica %+v)", got, got.Replica, want, want.Replica)
	}
}

func TestLoadCollectsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := load(t, map[string]string{
		"APP_BATCH":           "lots",
		"APP_POLL":            "5",
		"APP_PORTS":           "1;x",
		"APP_PRIMARY_TIMEOUT": "-1s",
		"APP_REPLICA_TIMEOUT": "soon",
	})
	got := problems(t, err)
	want := []string{
		`APP_NAME: required but not set`,
		`APP_BATCH: cannot parse "lots" as an integer (64 bits): invalid syntax`,
		`APP_POLL: cannot parse "5" as a duration (e.g. 250ms, 5s, 1m30s): time: missing unit in duration "5"`,
		`APP_PORTS: cannot parse "1;x" as a list of integer (64 bits): invalid syntax`,
		`APP_REPLICA_TIMEOUT: cannot parse "soon" as a duration (e.g. 250ms, 5s, 1m30s): time: invalid duration "soon"`,
		// Validate of the nested struct, under its prefix; APP_BATCH's
		// "must be positive" is left out: it did not parse.
		`APP_PRIMARY_TIMEOUT: must not be negative`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	msg := err.Error()
	for _, w := range want {
		if !strings.Contains(msg, "\n  "+w) {
			t.Errorf("Error() lacks line %q:\n%s", w, msg)
		}
	}
	if !strings.HasPrefix(msg, "invalid configuration:\n") {
		t.Errorf("Error() = %q", msg)
	}
}

func TestLoadValidateOnly(t *testing.T) {
	t.Parallel()
	_, err := load(t, map[string]string{"APP_NAME": "forbidden", "APP_BATCH": "0"})
	got := problems(t, err)
	want := []string{"APP_BATCH: must be positive", "APP_NAME: must not be forbidden"}
	if !slices.Equal(got, want) {
		t.Fatalf("problems = %q, want %q", got, want)
	}
}

func TestLoadAmbiguousFieldName(t *testing.T) {
	t.Parallel()
	// Primary.Timeout and Replica.Timeout share name and type: the bad one
	// must be named, whichever comes first.
	_, err := load(t, map[string]string{"APP_NAME": "x", "APP_REPLICA_TIMEOUT": "1h", "APP_PRIMARY_TIMEOUT": "x"})
	got := problems(t, err)
	if len(got) != 1 || !strings.HasPrefix(got[0], "APP_PRIMARY_TIMEOUT: ") {
		t.Fatalf("problems = %q", got)
	}
	_, err = load(t, map[string]string{"APP_NAME": "x", "APP_REPLICA_TIMEOUT": "x", "APP_PRIMARY_TIMEOUT": "1h"})
	got = problems(t, err)
	if len(got) != 1 || !strings.HasPrefix(got[0], "APP_REPLICA_TIMEOUT: ") {
		t.Fatalf("problems = %q", got)
	}
}

func TestLoadPrefixCheck(t *testing.T) {
	t.Parallel()
	environ := map[string]string{
		"APP_NAME":          "x",
		"APP_BACTH":         "1",
		"APP_PRIMARY_URLL":  "x",
		"APP_COMPLETELY":    "x",
		"APP_REPLICA_URL":   "x",
		"OTHER_APP_NAME":    "x",
		"JETPROJ_TYPO_HERE": "x",
	}
	_, err := load(t, environ, config.WithPrefixCheck("APP_", "JETPROJ_"))
	got := problems(t, err)
	want := []string{
		"APP_BACTH: unknown variable (did you mean APP_BATCH?)",
		"APP_COMPLETELY: unknown variable (no setting has this name)",
		"APP_PRIMARY_URLL: unknown variable (did you mean APP_PRIMARY_URL?)",
		"JETPROJ_TYPO_HERE: unknown variable (no setting has this name)",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := load(t, environ); err != nil {
		t.Fatalf("without the check: %v", err)
	}
}

func TestLoadDoesNotRepeatSecrets(t *testing.T) {
	t.Parallel()
	type secretive struct {
		TokenTTL time.Duration `env:"X_TOKEN_TTL"`
		Port     int           `env:"X_PORT"`
		Seed     string        `env:"X_SEED_FILE,file"`
	}
	_, err := config.Load[secretive](config.WithEnvironment(map[string]string{
		"X_TOKEN_TTL": "hunter2",
		"X_PORT":      "user:pass@word",
		"X_SEED_FILE": filepath.Join(t.TempDir(), "missing.nk"),
	}))
	problems(t, err)
	for _, s := range []string{"hunter2", "pass@word"} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error repeats %q:\n%v", s, err)
		}
	}
	for _, s := range []string{"X_TOKEN_TTL: cannot parse value as a duration", "X_PORT: cannot parse value as an integer", "X_SEED_FILE: cannot read file", "no such file or directory"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q:\n%v", s, err)
		}
	}
}

func TestLoadFileOption(t *testing.T) {
	t.Parallel()
	type withFile struct {
		Password string `env:"X_PASSWORD_FILE,file"`
	}
	path := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(path, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := config.Load[withFile](config.WithEnvironment(map[string]string{"X_PASSWORD_FILE": path}))
	if err != nil || got.Password != "s3cret" {
		t.Fatalf("got %q, %v", got.Password, err)
	}
}

func TestLoadProgrammingErrors(t *testing.T) {
	t.Parallel()
	type badOption struct {
		A string `env:"A,requird"`
	}
	_, err := config.Load[badOption](config.WithEnvironment(nil))
	if err == nil || errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), `"requird"`) {
		t.Fatalf("err = %v", err)
	}
	_, err = config.Load[*app]()
	if err == nil || errors.Is(err, config.ErrInvalid) {
		t.Fatalf("Load[*app] err = %v", err)
	}
	type noParser struct {
		C chan int `env:"C"`
	}
	_, err = config.Load[noParser](config.WithEnvironment(map[string]string{"C": "1"}))
	if err == nil || errors.Is(err, config.ErrInvalid) {
		t.Fatalf("chan field err = %v", err)
	}
}

func TestLoadProcessEnvironment(t *testing.T) {
	t.Setenv("APP_NAME", "from-process")
	got, err := config.Load[app]()
	if err != nil || got.Name != "from-process" {
		t.Fatalf("got %q, %v", got.Name, err)
	}
}

func TestVars(t *testing.T) {
	t.Parallel()
	type server struct {
		Host string `env:"HOST" doc:"Host name."`
	}
	type cfg struct {
		App     app
		Servers []server          `envPrefix:"SRV"`
		Headers map[string]string `env:"HDRS" envSeparator:";"`
	}
	vars, err := config.Vars(&cfg{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vars {
		got = append(got, fmt.Sprintf("%s %s def=%q/%v req=%v sep=%q doc=%q", v.Key, v.Field, v.Default, v.HasDefault, v.Required, v.Separator, v.Doc))
	}
	want := []string{
		`APP_NAME App.Name def=""/false req=true sep="" doc="Service name."`,
		`APP_BATCH App.Batch def="500"/true req=false sep="" doc=""`,
		`APP_POLL App.Poll def="1s"/true req=false sep="" doc=""`,
		`APP_SUBJECTS App.Subjects def=""/false req=false sep="," doc=""`,
		`APP_PORTS App.Ports def=""/false req=false sep=";" doc=""`,
		`APP_DEBUG App.Debug def=""/false req=false sep="" doc=""`,
		`APP_PRIMARY_URL App.Primary.URL def=""/false req=false sep="" doc="Connection string."`,
		`APP_PRIMARY_TIMEOUT App.Primary.Timeout def="5s"/true req=false sep="" doc=""`,
		`APP_REPLICA_URL App.Replica.URL def=""/false req=false sep="" doc="Connection string."`,
		`APP_REPLICA_TIMEOUT App.Replica.Timeout def="5s"/true req=false sep="" doc=""`,
		`SRV_{n}_HOST Servers[].Host def=""/false req=false sep="" doc="Host name."`,
		`HDRS Headers def=""/false req=false sep=";" doc=""`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("vars:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := config.Vars(42); err == nil {
		t.Fatal("Vars(42) succeeded")
	}

	// Indexed names are declared for the prefix check.
	_, err = config.Load[cfg](config.WithEnvironment(map[string]string{
		"APP_NAME": "x", "SRV_0_HOST": "a", "SRV_1_HOST": "b", "SRV_X_HOST": "c", "SRV_1_HOSTS": "d",
	}), config.WithPrefixCheck("SRV_"))
	got = problems(t, err)
	want = []string{"SRV_1_HOSTS: unknown variable (no setting has this name)", "SRV_X_HOST: unknown variable (no setting has this name)"}
	if !slices.Equal(got, want) {
		t.Fatalf("problems = %q, want %q", got, want)
	}
}
