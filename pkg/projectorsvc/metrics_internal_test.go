package projectorsvc

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Readiness with PROJECTOR_READY_MAX_LAG fails while a projection is
// further behind than the bound, naming it.
func TestBehind(t *testing.T) {
	g, err := newStatusGauges(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := g.behind(100); err != nil {
		t.Fatalf("nothing read yet: %v", err)
	}
	g.lags["wallet_balance"], g.lags["ticket_counts"] = 250, 100
	err = g.behind(100)
	if err == nil || !strings.Contains(err.Error(), "wallet_balance 250") || strings.Contains(err.Error(), "ticket_counts") {
		t.Fatalf("behind(100) = %v", err)
	}
	if err := g.behind(250); err != nil {
		t.Fatalf("behind(250) = %v", err)
	}
}
