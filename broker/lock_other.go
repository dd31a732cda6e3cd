//go:build !unix && !windows

package broker

import (
	"errors"
	"fmt"
	"os"
	"runtime"
)

// lockDir cannot lock a data directory on this system, so it refuses to
// run a broker rather than let two share one directory.
func lockDir(dir string) (*os.File, error) {
	return nil, fmt.Errorf("broker: locking data directory %s on %s: %w", dir, runtime.GOOS, errors.ErrUnsupported)
}
