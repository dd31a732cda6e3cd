//go:build linux

package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
)

// run runs the command of spec in a process group of its own, with SIGKILL
// as its parent-death signal, and stops the group when ctx ends.
func (h *execHandler) run(ctx context.Context, id string, spec *forq.ExecSpec) ([]byte, error) {
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
	if spec.Stream && h.cfg.Conn != nil {
		cmd.Stdout = io.MultiWriter(stdout, publisher{h.cfg.Conn, wire.OutputSubject(id, "stdout")})
		cmd.Stderr = io.MultiWriter(stderr, publisher{h.cfg.Conn, wire.OutputSubject(id, "stderr")})
	}
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
		grace := h.cfg.KillGrace
		if errors.Is(context.Cause(ctx), ErrAborted) {
			grace = min(grace, h.cfg.AbortGrace)
		}
		timer := time.NewTimer(grace)
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
