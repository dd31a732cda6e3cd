package consumer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Stopping a worker process.
//
// A worker process is asked to stop in one of two ways. Normally it gets
// SIGTERM or SIGINT (from a user, a service manager, or its pool passing
// on its own stop) and stops gracefully: it fetches no more tasks and lets
// the running ones finish within Config.Grace. Or its supervisor dies
// (SIGKILLed, killed by the OOM killer): a supervisor that started it with
// a parent-death signal, as "forq pool" does (SIGTERM), has the kernel send
// it that signal. Nobody then waits for the worker or replaces it, and its
// stdout and stderr, pipes to the supervisor, have no reader left: it must
// abort, handing its running tasks back at once, and not die of SIGPIPE on
// its first log line before it has.
//
// Both arrive as the same signal, and the signal may come before the
// kernel has given the worker its new parent (the parent-death signal is
// sent when the thread that forked the worker exits, which can come before
// the rest of the supervisor's threads do). So the one tells them apart by
// getppid(2): from a stop signal on, for as long as the stop goes on, the
// parent is looked at every stopPoll; once it is no longer the supervisor,
// the supervisor is gone. Only a process that has a parent-death signal
// set is watched so: a worker started under nohup whose shell has since
// exited has a new parent too, but no supervisor to lose.

// stopPoll is how often a stopping process looks for its supervisor's
// death.
const stopPoll = 20 * time.Millisecond

// EnvSupervisorPID names the environment variable that holds the PID of a
// worker's supervisor ("forq pool" sets it for its children). When it is
// set, StopContext watches that PID rather than the parent the process had
// when it started, and so also sees a supervisor that died before then.
const EnvSupervisorPID = "FORQ_POOL_PID"

var (
	// ErrStopSignal is wrapped by the cause of a StopContext's context
	// canceled by SIGINT or SIGTERM: a normal stop. The cause names the
	// signal.
	ErrStopSignal = errors.New("stop signal")
	// ErrSupervisorGone is the cause of a StopContext's context canceled
	// because the process's supervisor died, and is wrapped (with
	// ErrAborted) by the cause of the handlers' contexts the worker then
	// cancels.
	ErrSupervisorGone = errors.New("the worker's supervisor is gone")
	// ErrAborted is wrapped by the cause of a handler's context canceled
	// by Worker.Abort: the worker stops at once and the task is handed
	// back, to run again elsewhere. A handler that sees it should return
	// quickly and need not clean up at length (ExecHandler kills its
	// command after ExecConfig.AbortGrace rather than KillGrace).
	ErrAborted = errors.New("worker aborted")
)

// abortError is the cause of the handlers canceled by Abort. It is a stop
// (errStopping), so its task is handed back, not failed.
type abortError struct{ reason error }

func (e *abortError) Error() string {
	if e.reason == nil {
		return "worker aborted: task handed back"
	}
	return "worker aborted (" + e.reason.Error() + "): task handed back"
}

func (e *abortError) Is(target error) bool { return target == ErrAborted || target == errStopping }

func (e *abortError) Unwrap() error { return e.reason }

// stopKey is the context key of a StopContext's stopWatch.
type stopKey struct{}

// stopWatch is what a StopContext knows: gone is closed once the
// supervisor was seen dead.
type stopWatch struct{ gone chan struct{} }

// sigpipe makes writes to broken pipes fail with EPIPE for the rest of the
// process's life; see StopContext.
var sigpipe sync.Once

// StopContext returns a copy of parent that is canceled when this process
// is asked to stop, and a function that stops watching and cancels it
// (call it when the worker has stopped, as with signal.NotifyContext).
//
// SIGINT or SIGTERM is a normal stop: the context is canceled with a cause
// wrapping ErrStopSignal, and Worker.Run, given it (or a context derived
// from it), stops gracefully. The death of the process's supervisor is an
// abort: the context is canceled with cause ErrSupervisorGone (or, if it
// was already canceled by the signal, SupervisorGone's channel is closed),
// and Run calls Abort(ErrSupervisorGone): running handlers are canceled at
// once with a cause wrapping ErrAborted and ErrSupervisorGone, their tasks
// are handed back for immediate redelivery, and Run returns.
//
// The supervisor is the process whose PID EnvSupervisorPID holds, else the
// parent this process started with, and its death is watched for only if
// that parent set a parent-death signal for this process (on Linux;
// elsewhere never). A supervisor of your own gets this by starting its
// workers with SysProcAttr.Pdeathsig set to SIGTERM (from a goroutine
// locked to its OS thread, golang/go#27505) and, if it can, with
// EnvSupervisorPID set to its PID.
//
// From its first call on, a write to a broken pipe (the stdout or stderr of
// a dead supervisor) fails with EPIPE instead of killing the process with
// SIGPIPE (see os/signal), for the rest of the process's life, so that the
// worker's last log lines cannot keep it from handing its tasks back.
// Commands the process starts still get SIGPIPE's default action.
func StopContext(parent context.Context) (context.Context, context.CancelFunc) {
	sigpipe.Do(func() {
		// The channel is never read: Notify drops what does not fit.
		signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	})
	sw := &stopWatch{gone: make(chan struct{})}
	ctx, cancel := context.WithCancelCause(context.WithValue(parent, stopKey{}, sw))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	var watcher sync.WaitGroup
	watcher.Go(func() { sw.watch(sigs, done, cancel) })
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(done)
			watcher.Wait()
			cancel(context.Canceled)
		})
	}
}

// SupervisorGone returns a channel that is closed when the StopContext
// that ctx is (or derives from) sees its process's supervisor die; nil if
// ctx comes from no StopContext.
func SupervisorGone(ctx context.Context) <-chan struct{} {
	if sw, ok := ctx.Value(stopKey{}).(*stopWatch); ok {
		return sw.gone
	}
	return nil
}

// watch cancels the context on a stop signal, and from then on (or from
// the start, if the supervisor is already gone) looks for the
// supervisor's death until done is closed.
func (sw *stopWatch) watch(sigs <-chan os.Signal, done <-chan struct{}, cancel context.CancelCauseFunc) {
	gone := func() {
		cancel(ErrSupervisorGone) // if a stop signal has not canceled it yet
		close(sw.gone)
	}
	if supervised.gone() {
		gone()
		return
	}
	var tick <-chan time.Time
	for {
		select {
		case <-done:
			return
		case s := <-sigs:
			if supervised.gone() {
				gone()
				return
			}
			cancel(fmt.Errorf("%w: %v", ErrStopSignal, s))
			if tick == nil && supervised.watched() {
				t := time.NewTicker(stopPoll)
				defer t.Stop()
				tick = t.C
			}
		case <-tick:
			if supervised.gone() {
				gone()
				return
			}
		}
	}
}

// supervisor is the process whose death a StopContext watches for.
type supervisor struct{ pid int } // 0: none

func (s supervisor) watched() bool { return s.pid > 0 }

// gone reports whether this process's parent is no longer the supervisor.
func (s supervisor) gone() bool { return s.pid > 0 && os.Getppid() != s.pid }

// supervised is read at start-up, on the main thread: a parent-death
// signal is an attribute of the thread the parent forked, which is the
// main thread of this process (threads created later have none).
var supervised = findSupervisor()

// supervisorFrom returns the supervisor of a process whose parent is ppid
// and which has a parent-death signal set or not, given the value of
// EnvSupervisorPID.
func supervisorFrom(pdeathsig bool, ppid int, env string) supervisor {
	if !pdeathsig {
		return supervisor{}
	}
	if pid, err := strconv.Atoi(env); err == nil && pid > 0 {
		return supervisor{pid: pid}
	}
	return supervisor{pid: ppid}
}
