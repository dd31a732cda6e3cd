package pool

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

func checkPlatform() error { return nil }

// sysProcAttr puts the child in a process group of its own (pgid = pid) and
// asks the kernel to send it SIGTERM when the thread that forked it dies.
// The caller must fork from a goroutine locked to its OS thread for the
// child's whole life (golang/go#27505).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGTERM,
	}
}

// waitExited blocks until process pid has exited, without reaping it: the
// zombie keeps the pid, and with it the process group ID, from being reused
// until it is reaped.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return err
		}
	}
}

// signalPID sends sig to pid; a process already gone is not an error.
func signalPID(pid int, sig syscall.Signal) error {
	return ignoreESRCH(syscall.Kill(pid, sig))
}

// signalGroup sends sig to every process of process group pgid; a group
// already gone is not an error.
func signalGroup(pgid int, sig syscall.Signal) error {
	return ignoreESRCH(syscall.Kill(-pgid, sig))
}

func ignoreESRCH(err error) error {
	if errors.Is(err, syscall.ESRCH) || errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// readRSS returns the resident set size of process pid in bytes, read from
// the VmRSS line of /proc/<pid>/status.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("VmRSS:"))
		if !ok {
			continue
		}
		// "VmRSS:	   12345 kB"
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("/proc/%d/status: malformed VmRSS line %q", pid, sc.Bytes())
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status: %w", pid, err)
		}
		return kb * 1024, nil
	}
	// Kernel threads and zombies have no VmRSS line.
	return 0, nil
}
