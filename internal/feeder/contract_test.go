package feeder_test

import (
	"reflect"
	"testing"

	"github.com/jetproj/jetproj/internal/feeder"
	"github.com/jetproj/jetproj/pkg/contract"
)

// The feeder's defaults are the contract's names, in Defaults and in the
// env tags (which cannot name a constant, so they spell them).
func TestDefaultsAreTheContractsNames(t *testing.T) {
	d := feeder.Config{}.Defaults()
	typ := reflect.TypeOf(d)
	for field, want := range map[string]string{
		"Stream":        contract.EventsStream,
		"SubjectPrefix": contract.EventsPrefix,
		"LeaseBucket":   contract.FeederLeaseBucket,
		"StateBucket":   contract.FeederStateBucket,
	} {
		if got := reflect.ValueOf(d).FieldByName(field).String(); got != want {
			t.Errorf("Defaults().%s = %q, want %q", field, got, want)
		}
		f, ok := typ.FieldByName(field)
		if !ok {
			t.Fatalf("no field %s", field)
		}
		if got := f.Tag.Get("envDefault"); got != want {
			t.Errorf("%s: envDefault %q, want %q", field, got, want)
		}
	}
}
