package projection_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projection/projectiontest"
)

// Parcel has the field shapes whose decoding rules differ between JSON
// libraries: names matched without regard to case, an embedded struct, a
// string-encoded number, a pointer, a map, raw JSON and an ignored field.
type Parcel struct {
	Meta
	ID      string            `json:"id"`
	Weight  int64             `json:"weight,string"`
	Note    *string           `json:"note"`
	Labels  map[string]string `json:"labels"`
	Extra   json.RawMessage   `json:"extra"`
	Skipped string            `json:"-"`
}

type Meta struct {
	Origin string `json:"origin"`
}

// TestPayloadsDecodeAsEncodingJSONDoes pins the handlers' payload decoding
// (done with a faster library since 2026-12-06) to encoding/json's
// results and errors, the behaviour users' event types were written for.
func TestPayloadsDecodeAsEncodingJSONDoes(t *testing.T) {
	for _, raw := range []string{
		`{"ID":"p-1","WEIGHT":"12","note":"fragile","labels":{"a":"b"},"extra":{"x":[1,2]},"Skipped":"no","origin":"NL","unknown":{"deep":[true,null]}}`,
		`{"id":"p-2","weight":"7","note":null,"origin":"DE","id":"p-3"}`,
		`{"id":"p-4","weight":12}`,
		`{"id":"p-5","weight":"x"}`,
		`{"id":5}`,
		`{"id":"p-6"`,
		`not json`,
		`{"id":"\x"}`,
		`null`,
	} {
		t.Run(raw, func(t *testing.T) {
			var want Parcel
			wantErr := json.Unmarshal([]byte(raw), &want)

			p := projection.New[Order]("parcels", projection.FromAggregates("parcel"))
			var got Parcel
			projection.On(p, func(_ context.Context, _ *projection.Context[Order], e projection.Event[Parcel]) error {
				got = e.Data
				return nil
			})
			err := projectiontest.NewPartition(p, "parcel/p").Apply(context.Background(),
				projection.Meta{Type: "Parcel", Raw: json.RawMessage(raw)})

			if (err == nil) != (wantErr == nil) {
				t.Fatalf("error %v, encoding/json's %v", err, wantErr)
			}
			if err != nil {
				var de *projection.DecodeError
				if !errors.As(err, &de) || de.EventType != "Parcel" {
					t.Fatalf("error %v is not a DecodeError naming the event type", err)
				}
				// Messages may differ in wording for malformed escapes;
				// type errors name the field as encoding/json does.
				if te := (*json.UnmarshalTypeError)(nil); errors.As(wantErr, &te) && de.Err.Error() != wantErr.Error() {
					t.Fatalf("error %q, encoding/json's %q", de.Err, wantErr)
				}
				return
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded %+v, encoding/json %+v", got, want)
			}
		})
	}
}
