package projector_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/pkg/projection"
	"github.com/jetproj/jetproj/pkg/projector"
)

// New reports every problem of every definition at once, one per line,
// and errors.Is still finds projection.ErrInvalid among them.
func TestNewReportsEveryProblem(t *testing.T) {
	t.Parallel()
	nc, _ := devtest.Connect(t, devtest.NATS(t))
	noHandlers := projection.New[struct{}]("no_handlers", projection.FromAggregates("wallet"))
	dup := func() projection.Definer {
		p := projection.New[struct{}]("twice", projection.FromAggregates("wallet"))
		projection.OnAny(p, nil)
		return p
	}
	_, err := projector.New(nc, projector.Options{}, noHandlers, dup(), dup())
	if !errors.Is(err, projection.ErrInvalid) {
		t.Fatalf("New: %v, want an error matching projection.ErrInvalid", err)
	}
	lines := strings.Split(err.Error(), "\n")
	if !strings.Contains(err.Error(), `"no_handlers"`) || !strings.Contains(lines[len(lines)-1], `projection "twice" defined twice`) {
		t.Fatalf("New: %q, want the definition's problems, then the duplicate", err)
	}
}
