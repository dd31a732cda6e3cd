package torture

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// child is a process the harness started: the broker or the pool.
type child struct {
	name string
	pid  int
	done chan struct{} // closed once it is reaped
	exit string        // how it ended, once done
	out  *tailBuffer
	// killed is set before the harness kills it on purpose: its end is
	// a fault injected, not a failure.
	killed atomic.Bool
}

// startChild starts argv with env added, its output to out and kept in a
// tail for reports. It forks from a goroutine locked to its OS thread for
// the child's whole life, so that the child's parent-death signal
// (SIGTERM) fires only when this process dies (golang/go#27505).
func startChild(name string, argv, env []string, out io.Writer) (*child, error) {
	c := &child{name: name, done: make(chan struct{}), out: &tailBuffer{w: out, max: 4096}}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = c.out, c.out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			started <- fmt.Errorf("start %s: %w", name, err)
			close(c.done)
			return
		}
		c.pid = cmd.Process.Pid
		started <- nil
		err := cmd.Wait()
		if cmd.ProcessState != nil {
			c.exit = cmd.ProcessState.String()
		} else {
			c.exit = err.Error()
		}
		close(c.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return c, nil
}

// exited reports whether the child has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs the child's
// process group, and waits for it.
func (c *child) stop(grace time.Duration) {
	_ = syscall.Kill(c.pid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		_ = syscall.Kill(-c.pid, syscall.SIGKILL)
		<-c.done
	}
}

// tailBuffer passes writes on to w and keeps the last max bytes.
type tailBuffer struct {
	mu  sync.Mutex
	w   io.Writer
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	if t.w != nil {
		_, _ = t.w.Write(p)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
