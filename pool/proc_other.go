//go:build !linux

package pool

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"
)

func checkPlatform() error {
	return fmt.Errorf("pool: %s is not supported, only linux: %w", runtime.GOOS, errors.ErrUnsupported)
}

func sysProcAttr() *syscall.SysProcAttr   { return nil }
func waitExited(int) error                { return errors.ErrUnsupported }
func signalPID(int, syscall.Signal) error { return errors.ErrUnsupported }
func signalGroup(int, syscall.Signal) error {
	return errors.ErrUnsupported
}
func readRSS(int) (int64, error) { return 0, errors.ErrUnsupported }
