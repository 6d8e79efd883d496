package process_test

import (
	"context"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/jetproj/jetproj/internal/process"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The first SIGTERM cancels the context (graceful stop); a second one
// exits at once with 1, whatever the graceful stop still waits for.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	exited := make(chan int, 1)
	ctx, stop := process.SignalContext(context.Background(), slog.New(slog.DiscardHandler), func(code int) { exited <- code })
	defer stop()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the first SIGTERM did not cancel the context")
	}
	select {
	case code := <-exited:
		t.Fatalf("exit(%d) after the first signal", code)
	default:
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-exited:
		if code != 1 {
			t.Errorf("exit(%d) after the second signal, want exit(1)", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second signal did not exit")
	}
}

// stop releases the handler: the context is cancelled and no goroutine is
// left (goleak checks).
func TestStop(t *testing.T) {
	ctx, stop := process.SignalContext(context.Background(), slog.New(slog.DiscardHandler), func(int) { t.Error("exit called") })
	stop()
	if ctx.Err() == nil {
		t.Error("context not cancelled by stop")
	}
}
