//go:build !linux

package pool

import (
	"errors"
	"fmt"
	"os"
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
func killedFromOutside(*os.ProcessState) bool { return false }

func notifyChildExits(chan<- os.Signal) {}
func becomeSubreaper() (func(), error)  { return nil, errors.ErrUnsupported }

type procInfo struct {
	pid, ppid, sid int
	zombie         bool
}

func listProcs() ([]procInfo, error)                 { return nil, errors.ErrUnsupported }
func signalInSession(int, int, syscall.Signal) error { return errors.ErrUnsupported }
func reapPID(int) (ok bool, ws syscall.WaitStatus)   { return false, ws }

// RSS returns the resident set size of process pid in bytes; off Linux,
// an error wrapping errors.ErrUnsupported.
func RSS(int) (int64, error) { return 0, errors.ErrUnsupported }
