//go:build !linux

package consumer

import (
	"context"
	"errors"
	"fmt"
	"runtime"

	"github.com/forqhq/forq"
)

// run fails: exec tasks need Linux's process groups with a parent-death
// signal, so that a command never outlives its worker.
func (h *execHandler) run(_ context.Context, _ string, spec *forq.ExecSpec) ([]byte, error) {
	return nil, fmt.Errorf("exec %s: exec tasks need Linux, this worker runs on %s: %w: %w",
		spec.Argv[0], runtime.GOOS, errors.ErrUnsupported, ErrPermanent)
}
