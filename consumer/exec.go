package consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/forqhq/forq"
)

// Defaults of ExecConfig.
const (
	DefaultExecMaxOutput = 1 << 20
	DefaultExecKillGrace = 5 * time.Second
	// execStderrTail is how much of the end of stderr is kept.
	execStderrTail = 4 << 10
)

// ErrExecNotAllowed is the error of an exec task on a worker that does not
// allow it, or of a command outside the worker's allow-list. Such a task
// is dead-lettered at once.
var ErrExecNotAllowed = errors.New("exec not allowed")

// ExecConfig configures the exec task handler.
type ExecConfig struct {
	// Allow is the switch: without it every exec task fails with
	// ErrExecNotAllowed. Whoever can publish a task must not get a shell
	// by default.
	Allow bool
	// AllowList, if not empty, names the only commands allowed: an entry
	// with a slash must equal Argv[0]; one without must equal Argv[0] and
	// is found in PATH.
	AllowList []string
	// MaxOutput bounds the stdout kept as the result, in bytes; 0 means
	// DefaultExecMaxOutput.
	MaxOutput int
	// KillGrace is the time between SIGTERM and SIGKILL to the command's
	// process group when its task times out or is canceled; 0 means
	// DefaultExecKillGrace.
	KillGrace time.Duration
}

// ExecHandler returns the handler of forq.TypeExec tasks. Register it with
// w.Handle(forq.TypeExec, ExecHandler(cfg)).
//
// The command runs in its own process group, with the parent-death signal
// SIGKILL so that it dies with its worker. Exit 0 succeeds with an
// forq.ExecResult as the result; exit 75 (forq.ExitTempFail) and any other
// exit fail the attempt, to be retried per the task's attempts; a signal
// fails it naming the signal. When the task's context ends (timeout,
// cancel, the worker's grace is over) the whole process group gets SIGTERM,
// then SIGKILL after KillGrace. The group is killed when the command exits,
// so nothing it started in its group outlives it.
func ExecHandler(cfg ExecConfig) Handler {
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = DefaultExecMaxOutput
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = DefaultExecKillGrace
	}
	return &execHandler{cfg: cfg}
}

type execHandler struct{ cfg ExecConfig }

func (h *execHandler) allowed(argv0 string) error {
	if !h.cfg.Allow {
		return fmt.Errorf("%w: exec tasks are off on this worker (start it with --allow-exec): %w", ErrExecNotAllowed, ErrPermanent)
	}
	if len(h.cfg.AllowList) == 0 {
		return nil
	}
	for _, a := range h.cfg.AllowList {
		if a == argv0 {
			return nil
		}
	}
	return fmt.Errorf("%w: %q is not in this worker's allow-list %v: %w", ErrExecNotAllowed, argv0, h.cfg.AllowList, ErrPermanent)
}

// Handle runs the command of an exec task.
func (h *execHandler) Handle(ctx context.Context, t *Task) ([]byte, error) {
	spec, err := forq.ParseExecSpec(t.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrPermanent)
	}
	if err := h.allowed(spec.Argv[0]); err != nil {
		return nil, err
	}
	// The parent-death signal is tied to the thread that forks the child
	// (golang/go#27505): keep this goroutine on its thread until the child
	// has been reaped.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Dir = spec.Dir
	cmd.Env = append(execEnv(), spec.Env...)
	if spec.Stdin != "" {
		cmd.Stdin = strings.NewReader(spec.Stdin)
	}
	stdout := &boundedBuffer{max: h.cfg.MaxOutput}
	stderr := &tailBuffer{max: execStderrTail}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Something the command left in its group may hold the pipes: stop
	// waiting for them shortly after the command exits.
	cmd.WaitDelay = time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec %s: %w: %w", spec.Argv[0], err, ErrPermanent)
	}
	pgid := cmd.Process.Pid
	exited := make(chan struct{})
	var killers sync.WaitGroup
	killers.Go(func() {
		select {
		case <-exited:
			return
		case <-ctx.Done():
		}
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		timer := time.NewTimer(h.cfg.KillGrace)
		defer timer.Stop()
		select {
		case <-exited:
		case <-timer.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
	})
	werr := cmd.Wait()
	close(exited)
	killers.Wait()
	_ = syscall.Kill(-pgid, syscall.SIGKILL) // whatever it left behind
	res := forq.ExecResult{
		ExitCode:        cmd.ProcessState.ExitCode(),
		Stdout:          stdout.String(),
		StdoutTruncated: stdout.truncated,
		StderrTail:      stderr.String(),
		Duration:        time.Since(start),
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.Signal, res.SignalNumber = ws.Signal().String(), int(ws.Signal())
	}
	out, _ := json.Marshal(res)
	var ee *exec.ExitError
	switch {
	case werr != nil && !errors.As(werr, &ee) && !errors.Is(werr, exec.ErrWaitDelay):
		return out, fmt.Errorf("exec %s: %w", spec.Argv[0], werr)
	case ctx.Err() != nil:
		return out, context.Cause(ctx)
	case res.Signal != "":
		return out, fmt.Errorf("exec %s: killed by signal: %s%s", spec.Argv[0], res.Signal, tailNote(res.StderrTail))
	case res.ExitCode == forq.ExitTempFail:
		return out, fmt.Errorf("exec %s: exit status 75 (temporary failure, will retry)%s", spec.Argv[0], tailNote(res.StderrTail))
	case res.ExitCode != 0:
		return out, fmt.Errorf("exec %s: exit status %d%s", spec.Argv[0], res.ExitCode, tailNote(res.StderrTail))
	}
	return out, nil
}

func tailNote(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if len(s) > 512 {
		s = "…" + s[len(s)-512:]
	}
	return ": " + s
}

// execEnv is the worker's environment without forq's own settings, which
// may hold credentials.
func execEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "FORQ_") {
			env = append(env, e)
		}
	}
	return env
}

// boundedBuffer keeps the first max bytes written to it.
type boundedBuffer struct {
	buf       bytes.Buffer
	max       int
	truncated bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room < len(p) {
		b.truncated = true
		b.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *boundedBuffer) String() string { return b.buf.String() }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	if len(b.buf) > 2*b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	if len(b.buf) > b.max {
		return string(b.buf[len(b.buf)-b.max:])
	}
	return string(b.buf)
}
