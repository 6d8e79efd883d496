package natsconn_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jetproj/jetproj/internal/devenv/devtest"
	"github.com/jetproj/jetproj/internal/natsconn"
	"github.com/jetproj/jetproj/internal/natstest"
)

// TestClosedByServerFailsLiveness: after the server closes the connection
// with an error nats.go does not reconnect from ("maximum control line
// exceeded", issue 17), the liveness check fails, the guarded context ends
// with ErrClosed and the log says so at error level. Close by the owner is
// not a loss.
func TestClosedByServerFailsLiveness(t *testing.T) {
	n := devtest.NATS(t)
	proxy := natstest.NewProxy(t, n.URL())
	logger, logs := newLogger()
	c := connect(t, natsconn.Config{URL: proxy.URL(), Name: "victim"}, logger)
	gctx, stop := c.Guard(context.Background())
	defer stop()
	if err := c.Alive(context.Background()); err != nil {
		t.Fatalf("alive on a healthy connection: %v", err)
	}

	if err := proxy.SendToServer(natstest.OverlongPub()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("guarded context still running 10s after the server closed the connection")
	}
	if cause := context.Cause(gctx); !errors.Is(cause, natsconn.ErrClosed) {
		t.Errorf("cause %v, want ErrClosed", cause)
	}
	err := c.Alive(context.Background())
	if !errors.Is(err, natsconn.ErrClosed) || !strings.Contains(err.Error(), "maximum control line") {
		t.Errorf("alive after the server closed the connection: %v, want ErrClosed naming the server's error", err)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "will not reconnect") {
		t.Errorf("no error logged for the lost connection:\n%s", logs.String())
	}

	// Closing a healthy connection ourselves is no loss.
	other := connect(t, natsconn.Config{URL: n.URL(), Name: "closed-by-us"}, nil)
	octx, ostop := other.Guard(context.Background())
	defer ostop()
	other.Close()
	<-other.Lost()
	if err := other.Alive(context.Background()); err != nil {
		t.Errorf("alive after Close: %v, want nil", err)
	}
	if octx.Err() != nil {
		t.Errorf("guarded context ended by Close: %v", context.Cause(octx))
	}
}
