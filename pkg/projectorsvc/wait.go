package projectorsvc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jetproj/jetproj/pkg/projector"
)

// defaultWaitTimeout bounds `projector wait` without --timeout.
const defaultWaitTimeout = 30 * time.Second

// wait is `projector wait <name> --position N [--timeout D]`: it returns
// nil once the projection has applied the event at position, and an error
// that says why not otherwise (timeout, parked partition, unknown event).
func (s *service) wait(ctx context.Context, name string, position int64, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = defaultWaitTimeout
	}
	began := time.Now()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := projector.WaitFor(wctx, s.js(), s.pool, name, position)
	switch {
	case err == nil:
		s.progress("%s has applied position %d (waited %v)", name, position, time.Since(began).Round(time.Millisecond))
		return nil
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	return err
}
