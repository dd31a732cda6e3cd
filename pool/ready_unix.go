//go:build unix

package pool

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

func signalReady() error {
	s, ok := os.LookupEnv(EnvReadyFD)
	if !ok {
		return nil
	}
	_ = os.Unsetenv(EnvReadyFD) // cannot fail for a valid name
	fd, err := strconv.Atoi(s)
	if err != nil || fd < 3 {
		return fmt.Errorf("pool: %s=%q is not a file descriptor above 2", EnvReadyFD, s)
	}
	// Raw system calls rather than an *os.File, whose finalizer would close
	// a descriptor that turned out not to be ours.
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return fmt.Errorf("pool: %s=%d: %w", EnvReadyFD, fd, err)
	}
	if uint32(st.Mode)&syscall.S_IFMT != syscall.S_IFIFO {
		return fmt.Errorf("pool: %s=%d is not a pipe", EnvReadyFD, fd)
	}
	for {
		_, err = syscall.Write(fd, []byte{'r'})
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	_ = syscall.Close(fd) // a pipe: nothing is lost on close
	if err != nil {
		return fmt.Errorf("pool: tell the pool this process is ready: %w", err)
	}
	return nil
}
