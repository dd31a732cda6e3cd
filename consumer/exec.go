package consumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go"
)

// Defaults of ExecConfig.
const (
	DefaultExecMaxOutput = 1 << 20
	DefaultExecKillGrace = 5 * time.Second
	// DefaultExecAbortGrace is short: when a worker aborts (its
	// supervisor died) nobody waits for it, and its whole pool is gone.
	DefaultExecAbortGrace = 200 * time.Millisecond
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
	// AbortGrace replaces KillGrace, if shorter, when the task's context
	// was canceled because the worker aborts (ErrAborted: its supervisor
	// died, see StopContext); 0 means DefaultExecAbortGrace.
	AbortGrace time.Duration
	// Conn is the connection on which the output of a task that asks for
	// it (forq.ExecSpec.Stream) is published as the command writes it, on
	// wire.OutputSubject; nil: it is not published. The worker's own
	// connection is the one to give: a subscriber then has every chunk
	// before it can see the task's result.
	Conn *nats.Conn
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
// then SIGKILL after KillGrace; when the worker aborts (its supervisor
// died), after AbortGrace. The group is killed when the command exits, so
// nothing it started in its group outlives it.
//
// What is not covered: a worker killed outright (SIGKILL, the OOM killer)
// runs none of this. Its command dies of its parent-death signal, but what
// the command started (its children, in its process group) is not
// signaled: it is reparented and runs on to its own end. A command that
// starts children should make the last one itself (a shell script's exec),
// or start them with a parent-death signal of their own (util-linux's
// setpriv --pdeathsig KILL).
//
// Exec tasks need Linux (process groups with a parent-death signal). On
// other systems the handler builds, so that a portable worker can register
// it, but every exec task it is allowed to run fails at once, without
// retries, with an error wrapping errors.ErrUnsupported and ErrPermanent.
func ExecHandler(cfg ExecConfig) Handler {
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = DefaultExecMaxOutput
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = DefaultExecKillGrace
	}
	if cfg.AbortGrace <= 0 {
		cfg.AbortGrace = DefaultExecAbortGrace
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
	return h.run(ctx, t.ID, spec)
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

// publisher publishes each write as a message on subject: a chunk of
// the command's output as it wrote it (exec.Cmd copies its pipe to the
// writer as it reads). Publishing does not wait for the broker; a write
// that cannot be published (the connection closed, its reconnect buffer
// full) is lost to the stream, not to the result, and does not stop the
// command.
type publisher struct {
	nc      *nats.Conn
	subject string
}

func (p publisher) Write(b []byte) (int, error) {
	_ = p.nc.Publish(p.subject, b)
	return len(b), nil
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
