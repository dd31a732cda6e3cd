package consumer

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// findSupervisor reads this thread's parent-death signal, so it must run
// on the main thread: package initialization does.
func findSupervisor() supervisor {
	var sig int32
	_, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, unix.PR_GET_PDEATHSIG, uintptr(unsafe.Pointer(&sig)), 0)
	return supervisorFrom(errno == 0 && sig != 0, os.Getppid(), os.Getenv(EnvSupervisorPID))
}
