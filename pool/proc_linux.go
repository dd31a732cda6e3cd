package pool

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func checkPlatform() error { return nil }

// sysProcAttr puts the child in a session of its own, and so in a process
// group of its own (sid = pgid = pid), and asks the kernel to send it
// SIGTERM when the thread that forked it dies. The caller must fork from a
// goroutine locked to its OS thread for the child's whole life
// (golang/go#27505).
//
// The session is what ties the child's descendants to it: a command that
// puts its children in process groups of their own (forq's exec tasks)
// leaves them in the session, and the reaper finds them there once the
// child is dead (see reaper).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Setsid:    true,
		Pdeathsig: syscall.SIGTERM,
	}
}

var subreaper struct {
	mu    sync.Mutex
	users int  // Runs that need it
	was   bool // this process was a subreaper before the first of them
}

// becomeSubreaper makes this process a child subreaper
// (PR_SET_CHILD_SUBREAPER): the descendants orphaned by the death of their
// parent are reparented to it rather than to init. Calls are counted; undo
// ends the last one, and clears the attribute unless the process had it
// before the first.
func becomeSubreaper() (undo func(), err error) {
	subreaper.mu.Lock()
	defer subreaper.mu.Unlock()
	if subreaper.users == 0 {
		var was int32
		// PR_GET_CHILD_SUBREAPER stores an int through its pointer argument.
		if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&was)), 0, 0, 0); err != nil {
			return nil, fmt.Errorf("pool: prctl(PR_GET_CHILD_SUBREAPER): %w", err)
		}
		subreaper.was = was != 0
		if !subreaper.was {
			if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
				return nil, fmt.Errorf("pool: prctl(PR_SET_CHILD_SUBREAPER): %w", err)
			}
		}
	}
	subreaper.users++
	var once sync.Once
	return func() {
		once.Do(func() {
			subreaper.mu.Lock()
			defer subreaper.mu.Unlock()
			subreaper.users--
			if subreaper.users == 0 && !subreaper.was {
				_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
			}
		})
	}, nil
}

// notifyChildExits relays SIGCHLD, sent whenever a child of this process
// exits, to c.
func notifyChildExits(c chan<- os.Signal) { signal.Notify(c, syscall.SIGCHLD) }

// procInfo is a process as /proc/<pid>/stat shows it.
type procInfo struct {
	pid, ppid, sid int
	zombie         bool
}

// listProcs returns every process of the system (of this PID namespace)
// from /proc. A process that exits while it is read is left out.
func listProcs() ([]procInfo, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	ps := make([]procInfo, 0, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, err := readProcStat(pid); err == nil {
			ps = append(ps, p)
		}
	}
	return ps, nil
}

// readProcStat reads /proc/<pid>/stat: "pid (comm) state ppid pgrp session
// ...", where comm may hold spaces and parentheses.
func readProcStat(pid int) (procInfo, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, err
	}
	var f [][]byte
	if i := bytes.LastIndexByte(b, ')'); i >= 0 {
		f = bytes.Fields(b[i+1:])
	}
	if len(f) < 4 {
		return procInfo{}, fmt.Errorf("/proc/%d/stat: malformed %q", pid, b)
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	sid, err2 := strconv.Atoi(string(f[3]))
	if err1 != nil || err2 != nil {
		return procInfo{}, fmt.Errorf("/proc/%d/stat: malformed %q", pid, b)
	}
	state := f[0][0]
	return procInfo{pid: pid, ppid: ppid, sid: sid, zombie: state == 'Z' || state == 'X'}, nil
}

// signalInSession sends sig to process pid if it is still a live member of
// session sid. A pidfd pins the process between the check and the signal,
// so that a PID reused meanwhile is not signalled; a kernel without pidfds
// (before 5.3) gets a plain kill after the check.
func signalInSession(pid, sid int, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return nil
	case errors.Is(err, unix.ENOSYS):
		fd = -1
	case err != nil:
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	default:
		defer func() { _ = unix.Close(fd) }() // a pidfd: nothing to flush
	}
	if p, err := readProcStat(pid); err != nil || p.sid != sid || p.zombie {
		return nil // gone, or not the process seen in the session
	}
	if fd < 0 {
		return signalPID(pid, sig)
	}
	return ignoreESRCH(unix.PidfdSendSignal(fd, sig, nil, 0))
}

// reapPID reaps process pid if it is a child of this process that has
// exited, without blocking. It reports whether it reaped it, and how it
// ended.
func reapPID(pid int) (bool, syscall.WaitStatus) {
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		return err == nil && got == pid, ws
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

// RSS returns the resident set size of process pid in bytes, read from
// the VmRSS line of /proc/<pid>/status: 0 for a zombie or a kernel thread,
// which have none; for a process that is gone, the error of reading the
// file (it wraps fs.ErrNotExist). The supervisor reads its children's for
// Config.MaxRSS.
func RSS(pid int) (int64, error) {
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

// killedFromOutside reports whether state is a death by a signal that
// another process sent (SIGKILL, SIGTERM, ...), rather than one the child
// brought on itself by a fault or an abort.
func killedFromOutside(state *os.ProcessState) bool {
	if state == nil {
		return false
	}
	ws, ok := state.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return false
	}
	switch ws.Signal() {
	case syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGILL, syscall.SIGFPE,
		syscall.SIGABRT, syscall.SIGSYS, syscall.SIGTRAP:
		return false
	}
	return true
}
