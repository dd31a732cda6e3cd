// Package sleep waits for a while unless a context ends first: the one
// such wait of forq's commands, their task handlers and their loops.
package sleep

import (
	"context"
	"time"
)

// For waits d, or until ctx ends. It returns nil once d has passed, or
// ctx's cause (context.Cause) if ctx ended first.
func For(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
