package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/config"
)

// Defaults is what Load reads from an empty environment, required
// variables aside.
func TestDefaultsAreLoadsWithNothingSet(t *testing.T) {
	t.Parallel()
	got := config.Defaults[app]()
	want, err := config.Load[app](config.WithEnvironment(map[string]string{"APP_NAME": "x"}))
	if err != nil {
		t.Fatal(err)
	}
	want.Name = "" // required: Defaults leaves it empty
	if got.Batch != 500 || got.Poll != time.Second || got.Primary.Timeout != 5*time.Second {
		t.Fatalf("Defaults: %+v", got)
	}
	if got.Batch != want.Batch || got.Poll != want.Poll || got.Primary != want.Primary || got.Name != want.Name {
		t.Fatalf("Defaults %+v, Load %+v", got, want)
	}
}

// FillDefaults sets the zero fields only.
func TestFillDefaultsKeepsWhatIsSet(t *testing.T) {
	t.Parallel()
	got := config.FillDefaults(app{Name: "a", Poll: time.Minute})
	if got.Name != "a" || got.Poll != time.Minute || got.Batch != 500 || got.Primary.Timeout != 5*time.Second {
		t.Fatalf("FillDefaults: %+v", got)
	}
}

// A default that does not parse is a programming error.
func TestDefaultsPanicOnABadTag(t *testing.T) {
	t.Parallel()
	type bad struct {
		N int `env:"N" envDefault:"many"`
	}
	defer func() {
		if r, _ := recover().(string); !strings.Contains(r, "defaults of") {
			t.Fatalf("recovered %q, want a panic naming the struct", r)
		}
	}()
	config.Defaults[bad]()
}
