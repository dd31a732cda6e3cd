package pool

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// drainTimeout bounds how long a child's output is still read after the
// child and its process group are gone. A descendant in another group of
// the child's session that keeps the pipes open holds the drain until the
// reaper kills it (Config.OrphanGrace); only one that left the session, or
// a longer OrphanGrace, makes it expire.
const drainTimeout = time.Second

// proc is one life of one child: one OS process, from start to reaping.
type proc struct {
	index    int
	restarts int       // the slot's crash restarts before this child (EnvRestarts)
	pid      int       // set before start reports success
	started  time.Time // idem

	mu     sync.Mutex
	exited bool // the leader has exited and its group was killed; it may be reaped from now on
}

// signal sends sig to the child's PID unless it has already exited.
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return nil
	}
	return signalPID(p.pid, sig)
}

// killGroup SIGKILLs the child's whole process group unless the child has
// already exited (then its group was killed already). It is idempotent.
//
// While exited is false the child is at worst a zombie that has not been
// reaped, which keeps its PID, and so the group ID, from being reused.
func (p *proc) killGroup() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return nil
	}
	return signalGroup(p.pid, syscall.SIGKILL)
}

// exit reports the end of a proc to the supervisor's loop.
type exit struct {
	proc  *proc
	at    time.Time        // when the process was seen to exit
	state *os.ProcessState // nil if err is set and the process could not be waited for
	err   error            // an error from Wait other than *exec.ExitError
}

// status describes how the process ended, as "exit status 1" or
// "signal: killed".
func (e exit) status() string {
	if e.state != nil {
		return e.state.String()
	}
	return "wait: " + e.err.Error()
}

// runProc starts, supervises and reaps one child process. It runs in its own
// goroutine, locked to its OS thread for the child's whole life because the
// parent-death signal fires when the thread that forked the child exits
// (golang/go#27505). It never unlocks: the goroutine exits locked once the
// child is reaped, and the runtime discards the thread.
//
// It reports the outcome of Start on started (buffered), and, if the child
// started: p on readies when the child first writes to its readiness pipe
// (EnvReadyFD), then its exit on exits, always in that order. It is the only
// caller of Wait for the child.
//
// It forks the child under rp's lock and tells rp when the child's session
// ends (the child has exited) and when the child has been reaped.
func (s *Supervisor) runProc(p *proc, rp *reaper, started chan<- error, readies chan<- *proc, exits chan<- exit) {
	runtime.LockOSThread()

	cfg := &s.cfg
	cmd := exec.Command(cfg.Command[0], cfg.Command[1:]...)
	cmd.Dir = cfg.Dir
	cmd.Env = append(append(os.Environ(), cfg.Env...),
		EnvIndex+"="+strconv.Itoa(p.index),
		EnvPoolPID+"="+strconv.Itoa(os.Getpid()),
		EnvRestarts+"="+strconv.Itoa(p.restarts),
		EnvReadyFD+"="+strconv.Itoa(readyFD),
	)
	cmd.SysProcAttr = sysProcAttr()

	// Our own pipes rather than io.Writers on exec.Cmd: Wait then returns
	// as soon as the child exits, even if a descendant still holds the
	// pipes, and we kill the group before we drain them. Pipes 0 and 1 are
	// the child's stdout and stderr, pipe 2 its readiness pipe.
	var r, w [3]*os.File
	for i := range r {
		var err error
		if r[i], w[i], err = os.Pipe(); err != nil {
			closeAll(r[:i]...)
			closeAll(w[:i]...)
			started <- err
			return
		}
	}
	cmd.Stdout, cmd.Stderr = w[0], w[1]
	cmd.ExtraFiles = []*os.File{w[2]} // descriptor 3 = readyFD
	err := rp.start(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	closeAll(w[:]...)
	if err != nil {
		closeAll(r[:]...)
		started <- err
		return
	}
	p.pid, p.started = cmd.Process.Pid, time.Now()
	var copiers sync.WaitGroup
	for i, stream := range [2]string{"stdout", "stderr"} {
		copiers.Go(func() { s.out.copyLines(r[i], p.index, p.pid, stream) })
	}
	copiers.Go(func() { awaitReady(r[2], p, readies) })
	started <- nil

	// Wait for the exit without reaping, kill what is left of the group
	// while the zombie still holds the group ID, have the reaper kill what
	// is left of the session, then drain and reap.
	// waitid can only fail here if the process is not our child, which
	// cannot happen; the group is killed all the same, as the child's life
	// is over either way.
	_ = waitExited(p.pid)
	exitedAt := time.Now()
	p.mu.Lock()
	_ = signalGroup(p.pid, syscall.SIGKILL)
	p.exited = true
	p.mu.Unlock()
	rp.ended(p.pid, exitedAt)

	drained := make(chan struct{})
	go func() { copiers.Wait(); close(drained) }()
	t := time.NewTimer(drainTimeout)
	select {
	case <-drained:
	case <-t.C:
		closeAll(r[:]...) // unblocks the copiers' reads
		<-drained
	}
	t.Stop()
	closeAll(r[:]...)

	e := exit{proc: p, at: exitedAt}
	if err := cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			e.err = err
		}
	}
	e.state = cmd.ProcessState
	rp.reaped(p.pid)
	exits <- e
}

// readyFD is the descriptor of the readiness pipe in the child, the first
// after stdin, stdout and stderr.
const readyFD = 3

// awaitReady reads the readiness pipe to its end, and sends p on readies at
// its first byte. Reading on after that keeps a child that writes more than
// once from a broken pipe.
func awaitReady(r *os.File, p *proc, readies chan<- *proc) {
	var buf [64]byte
	signalled := false
	for {
		n, err := r.Read(buf[:])
		if n > 0 && !signalled {
			signalled = true
			readies <- p
		}
		if err != nil { // io.EOF, or os.ErrClosed after a drain timeout
			return
		}
	}
}

func closeAll(files ...*os.File) {
	for _, f := range files {
		if f != nil {
			_ = f.Close() // closing twice after a drain timeout is harmless
		}
	}
}
