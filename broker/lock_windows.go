//go:build windows

package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/windows"
)

// lockFile is the name, in the data directory, of the file a broker holds
// an exclusive lock on while it runs. It holds the broker's PID. Windows
// drops the lock when the process dies, so a file left behind does not
// block the next broker.
const lockFile = "broker.lock"

// lockDir takes the data directory's lock, or says which process holds it.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("broker: data directory %s is not writable: %w", dir, err)
	}
	// Lock a byte far past the PID, so that another process can still read
	// the PID.
	ol := &windows.Overlapped{Offset: 1 << 30}
	if err := windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol); err != nil {
		b, _ := os.ReadFile(path)
		_ = f.Close() // nothing was written
		if errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
			holder := "a process that has not written its PID yet"
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = "PID " + strconv.Itoa(pid)
			}
			return nil, fmt.Errorf("broker: %w: %s is held by another broker, %s (stop it, or give another --data-dir)", ErrDataDirLocked, dir, holder)
		}
		return nil, fmt.Errorf("broker: lock data directory %s: %w", dir, err)
	}
	// The PID is for people and for the message above: a failure to write
	// it is a data directory that will not take JetStream's files either.
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		_ = f.Close() // the write's error is the one to report
		return nil, fmt.Errorf("broker: data directory %s is not writable: %w", dir, err)
	}
	return f, nil
}
