// Package process holds what every jetproj service process does the same
// way: its logger (LOG_FORMAT, LOG_LEVEL), its shutdown on signals (the
// first SIGINT or SIGTERM cancels the context so work stops gracefully; a
// second one exits at once) and its soft memory limit below the
// container's.
package process

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// SignalContext returns a context cancelled by the first SIGINT or SIGTERM.
// A second signal calls exit(1). stop releases the signal handler.
func SignalContext(ctx context.Context, log *slog.Logger, exit func(int)) (_ context.Context, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			log.Info("shutting down; signal again to exit at once", "signal", sig.String())
			cancel()
		case <-done:
			return
		}
		select {
		case sig := <-ch:
			log.Warn("exiting at once", "signal", sig.String())
			exit(1)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel()
	}
}
