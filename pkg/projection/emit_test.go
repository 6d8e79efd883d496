package projection_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projection/projectiontest"
)

// emitWith runs a handler that emits with opts and returns its error and
// what it recorded.
func emitWith(t *testing.T, link string, opts ...projection.EmitOption) ([]projectiontest.Emission, error) {
	t.Helper()
	p := projection.New[Order]("orders", projection.FromAggregates("order"))
	projection.On(p, func(_ context.Context, c *projection.Context[Order], _ projection.Event[OrderShipped]) error {
		if link != "" {
			return c.LinkTo(link, "T", 1, opts...)
		}
		return c.Emit("T", 1, opts...)
	})
	pt := projectiontest.NewPartition(p, "order/o-1")
	err := pt.Apply(context.Background(), projectiontest.Event("OrderShipped", OrderShipped{}))
	return pt.Emitted, err
}

func TestEmitOptions(t *testing.T) {
	long := strings.Repeat("k", projection.MaxMetadataKeyLen)
	for _, tc := range []struct {
		name string
		link string
		opts []projection.EmitOption
		ok   bool
	}{
		{"plain", "", nil, true},
		{"key at the limit", "", []projection.EmitOption{projection.Metadata(map[string]string{long: "v"})}, true},
		{"key over the limit", "", []projection.EmitOption{projection.Metadata(map[string]string{long + "k": "v"})}, false},
		// é is two bytes, each encoded in three: 22 of them take 132 bytes.
		{"non-ASCII key over the limit", "", []projection.EmitOption{projection.Metadata(map[string]string{strings.Repeat("é", 22): "v"})}, false},
		{"non-ASCII key within", "", []projection.EmitOption{projection.Metadata(map[string]string{strings.Repeat("é", 21): "v"})}, true},
		{"empty key", "", []projection.EmitOption{projection.Metadata(map[string]string{"": "v"})}, false},
		{"link only without a link", "", []projection.EmitOption{projection.LinkOnly()}, false},
		{"link only with LinkTo", "a", []projection.EmitOption{projection.LinkOnly()}, true},
		{"bad link name", "", []projection.EmitOption{projection.Link("not a stream")}, false},
		{"links sharing subjects", "", []projection.EmitOption{projection.Link("audit", "Audit")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := emitWith(t, tc.link, tc.opts...)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok %v", err, tc.ok)
			}
			if err != nil {
				if !errors.Is(err, projection.ErrInvalidEmission) {
					t.Fatalf("err %v does not match ErrInvalidEmission", err)
				}
				if len(got) != 0 {
					t.Fatalf("a refused emission was recorded: %+v", got)
				}
			}
		})
	}
}

// Own metadata merges over several options; a stream named twice is linked
// once, LinkTo's first; LinkExisting marks its streams only.
func TestEmitOptionsCombine(t *testing.T) {
	got, err := emitWith(t, "a",
		projection.Metadata(map[string]string{"k": "1", "j": "x"}), projection.Metadata(map[string]string{"k": "2"}),
		projection.Link("b", "a"), projection.LinkExisting("theirs"))
	if err != nil {
		t.Fatal(err)
	}
	e := got[0]
	want := []projectiontest.Link{{Stream: "a"}, {Stream: "b"}, {Stream: "theirs", Existing: true}}
	if len(e.Links) != len(want) || e.LinkOnly || e.Metadata["k"] != "2" || e.Metadata["j"] != "x" {
		t.Fatalf("emission %+v", e)
	}
	for i := range want {
		if e.Links[i] != want[i] {
			t.Fatalf("links %+v, want %+v", e.Links, want)
		}
	}
}
