package sleep

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	start := time.Now()
	if err := For(t.Context(), 20*time.Millisecond); err != nil || time.Since(start) < 20*time.Millisecond {
		t.Errorf("got %v after %s, want nil after 20ms", err, time.Since(start))
	}
	stop := errors.New("stop")
	ctx, cancel := context.WithCancelCause(t.Context())
	time.AfterFunc(10*time.Millisecond, func() { cancel(stop) })
	start = time.Now()
	if err := For(ctx, time.Hour); !errors.Is(err, stop) || time.Since(start) > time.Minute {
		t.Errorf("got %v after %s, want the context's cause at once", err, time.Since(start))
	}
}
