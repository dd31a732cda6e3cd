//go:build unix

package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/forqhq/forq"
)

// lockFile is the name, in the data directory, of the file a broker holds
// an exclusive flock on while it runs. It holds the broker's PID. The
// kernel drops the lock when the process dies, however it dies, so a file
// left behind by a SIGKILLed broker does not block the next one.
const lockFile = "broker.lock"

// lockDir takes the data directory's lock, or says which process holds it.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("broker: data directory %s is not writable: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		_ = f.Close() // nothing was written
		if errors.Is(err, syscall.EWOULDBLOCK) {
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
		if errors.Is(err, syscall.ENOSPC) {
			return nil, fmt.Errorf("broker: %w: data directory %s has no room for the broker's lock file: %w (free some space where %s is)", forq.ErrStorageFull, dir, err, dir)
		}
		return nil, fmt.Errorf("broker: data directory %s is not writable: %w", dir, err)
	}
	return f, nil
}
