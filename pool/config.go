package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"time"
)

// Names of the environment variables every child is started with.
const (
	// EnvIndex holds the child's index in the pool, from 0 ("0", "1", ...).
	// A child replaced after a crash, a recycle or a memory excess keeps its
	// index.
	EnvIndex = "FORQ_POOL_INDEX"
	// EnvPoolPID holds the PID of the supervising process.
	EnvPoolPID = "FORQ_POOL_PID"
	// EnvRestarts holds how many times the child's slot (its index) was
	// restarted after a crash before this child was started ("0" for the
	// first child of a slot): the crashes [Supervisor.Restarts] counts,
	// failures to start included. Recycles (RecycleExitCode, MaxRSS) are
	// not restarts and do not change it; the count carries over them.
	EnvRestarts = "FORQ_POOL_RESTARTS"
	// EnvReadyFD holds the number of the file descriptor ("3") on which the
	// child tells the supervisor that it is ready: it writes a byte to it
	// and closes it, as [Ready] does. See [Config.ReadyTimeout] for a child
	// that never does.
	EnvReadyFD = "FORQ_READY_FD"
)

// ExitRecycle is the default [Config.RecycleExitCode]: a child exiting with
// it asks to be replaced by a fresh process, which is not a crash.
const ExitRecycle = 100

// Defaults of the zero values of [Config].
const (
	DefaultGrace         = 10 * time.Second
	DefaultMaxRestarts   = 5
	DefaultRestartWindow = 10 * time.Second
	DefaultBackoffMin    = 100 * time.Millisecond
	DefaultBackoffMax    = 10 * time.Second
	DefaultRSSInterval   = time.Second
	DefaultScaleInterval = time.Second
	DefaultIdleTimeout   = 5 * time.Second
	DefaultReadyTimeout  = 10 * time.Second
	DefaultOrphanGrace   = 200 * time.Millisecond
)

var (
	// ErrInvalidConfig is wrapped by the error [New] returns for a Config it
	// cannot run; the message names the offending field.
	ErrInvalidConfig = errors.New("pool: invalid config")
	// ErrRestartStorm is wrapped by the error [Supervisor.Run] returns when a
	// child failed to start more than [Config.MaxRestarts] times in a row
	// within [Config.RestartWindow]: each time it exited before it was ready
	// (see [Config.ReadyTimeout]). The message names the child, the number
	// of failures, the window and the child's last exit status.
	ErrRestartStorm = errors.New("pool: restart storm")
	// ErrGraceExpired is wrapped by the error [Supervisor.Run] returns when
	// some children did not exit within [Config.Grace] of being asked to stop
	// and had to be killed. The message says how many.
	ErrGraceExpired = errors.New("pool: grace period expired")
)

// Config configures a [Supervisor]. Zero values take the documented
// defaults. Durations and counts must not be negative.
type Config struct {
	// Size is the number of children. It defaults to runtime.NumCPU().
	// With autoscaling (Max > 0) it is the initial size, clamped to
	// [Min, Max], and defaults to Min.
	Size int
	// Command is the argv of each child; it is required. Command[0] is
	// looked up in PATH when it contains no slash.
	Command []string
	// Env is extra environment for the children, appended to os.Environ().
	// EnvIndex, EnvPoolPID and EnvReadyFD are appended after it and win
	// over it.
	Env []string
	// Dir is the children's working directory; empty means the
	// supervisor's.
	Dir string

	// Grace is how long a child asked to stop with SIGTERM (at shutdown,
	// when shrinking, or above MaxRSS) may take to exit before its whole
	// process group is SIGKILLed. It defaults to DefaultGrace (10s).
	Grace time.Duration

	// MaxRestarts is the restart-storm limit: more than MaxRestarts failures
	// to start of one child in a row within RestartWindow stop the pool, and
	// Run returns an error wrapping ErrRestartStorm. A child fails to start
	// when it exits before it is ready (see ReadyTimeout) with any exit
	// status but RecycleExitCode, or is killed by a signal of its own making
	// (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS, SIGTRAP). A crash
	// after the child was ready never counts: a task that crashes its worker
	// must not stop the pool. Nor does a death by any other signal (SIGKILL,
	// SIGTERM, ...: an operator, the OOM killer), nor a recycle. A child that
	// becomes ready clears its count. It defaults to DefaultMaxRestarts (5).
	MaxRestarts int
	// RestartWindow is the window of the restart-storm limit. It defaults to
	// DefaultRestartWindow (10s).
	RestartWindow time.Duration
	// ReadyTimeout is how long a child may take to tell the supervisor that
	// it is ready, by writing a byte to the file descriptor named by
	// EnvReadyFD (see [Ready]). A child that has neither done so nor exited
	// within ReadyTimeout of its start is deemed ready, so that a command
	// that knows nothing of EnvReadyFD is ready once it has run that long.
	// It defaults to DefaultReadyTimeout (10s).
	ReadyTimeout time.Duration
	// BackoffMin is the delay before the first restart of a crashed child.
	// It defaults to DefaultBackoffMin (100ms). Each further crash doubles
	// the delay. Each actual delay is up to 50% longer, at random, and never
	// exceeds BackoffMax. A child that became ready starts over at
	// BackoffMin: only children that keep failing to start wait longer and
	// longer. A child that exits with RecycleExitCode is replaced at once,
	// with no delay, unless it was not ready yet and had run for less than
	// its current restart delay: it is then started again that delay after
	// its previous start, and the delay doubles, so that a child that asks to
	// be recycled at once every time is not restarted in a tight loop.
	BackoffMin time.Duration
	// BackoffMax caps the restart delay. It defaults to DefaultBackoffMax
	// (10s).
	BackoffMax time.Duration

	// OrphanGrace is how long the processes a child leaves behind when it
	// exits (the descendants still in its session, see the package doc) have
	// between SIGTERM and SIGKILL. The child that should have stopped them is
	// dead, so it is short. It defaults to DefaultOrphanGrace (200ms).
	OrphanGrace time.Duration
	// ReapAll says that the Supervisor is the only part of this process
	// that starts child processes, so that it may reap any exited child of
	// the process it did not start: a descendant that left its child's
	// session (setsid, a daemon) and whose parent died is reparented to
	// this process, and is reaped when it exits only with ReapAll. Without
	// it, such a process stays a zombie once it exits, until this process
	// exits. Do not set it if other code of the process starts processes
	// (os/exec): their exit status could be taken from them. forq pool and
	// forq run set it.
	ReapAll bool

	// RecycleExitCode is the exit code by which a child asks to be replaced
	// (for instance after it ran its maximum number of tasks): it is
	// replaced at once, and this is never counted as a crash nor toward a
	// restart storm. A child that does so before it is ready, within its
	// restart delay of its start (see BackoffMin), is replaced that delay
	// after its start, and the delay grows as after a failure to start:
	// a child that would recycle at once every time runs at most once per
	// BackoffMax. A child that tells the pool it is ready (see [Ready])
	// before its first task is always replaced at once. It defaults to
	// ExitRecycle (100) and must be in 1..255.
	RecycleExitCode int

	// MaxRSS is a ceiling on each child's resident memory in bytes; 0 turns
	// it off. A child above it (VmRSS of the child process itself, not of its
	// descendants, read from /proc every RSSInterval) receives SIGTERM,
	// drains and is replaced; this is not counted as a crash.
	MaxRSS int64
	// RSSInterval is how often the children's memory is read when MaxRSS is
	// set. It defaults to DefaultRSSInterval (1s).
	RSSInterval time.Duration

	// Min and Max bound the pool's size when autoscaling, which is on when
	// Max > 0. Min defaults to 1 and must not exceed Max.
	//
	// Every ScaleInterval the supervisor calls Backlog. It adds one child
	// (up to Max) while the backlog is positive and either exceeds the
	// number of children or has grown since the previous poll. When the
	// backlog has been zero for IdleTimeout, it stops the child with the
	// highest index (the one added last) with SIGTERM, and repeats this every
	// further IdleTimeout down to Min. A child stopped that way is not
	// replaced, whatever its exit status.
	Min, Max int
	// Backlog reports the work waiting (queued and in flight). It is
	// required for autoscaling and for UntilEmpty. It is called from one
	// goroutine at a time and must return when ctx is canceled. A call that
	// returns an error is logged and ignored: no scaling happens on that
	// tick.
	Backlog func(ctx context.Context) (int64, error)
	// ScaleInterval is how often Backlog is polled. It defaults to
	// DefaultScaleInterval (1s).
	ScaleInterval time.Duration
	// IdleTimeout is how long the backlog must stay zero before the pool
	// shrinks by one child. It defaults to DefaultIdleTimeout (5s).
	IdleTimeout time.Duration

	// UntilEmpty makes the pool close and join: once Backlog reports 0, all
	// children are stopped gracefully (SIGTERM, then Grace) and Run returns
	// nil when all have exited. In this mode a child that exits 0 is done
	// and not restarted, and Run also returns once every child is done.
	UntilEmpty bool

	// Stdout and Stderr receive the children's standard output and error,
	// line by line, each line prefixed with "[<index> <pid>] ". Lines from
	// different children are never interleaved; a line longer than 64 KiB is
	// split, and a last line without a newline gets one. They default to
	// os.Stdout and os.Stderr. A Writer that blocks holds up the children
	// writing to it.
	Stdout, Stderr io.Writer
	// Logger receives the supervisor's own events (start, exit, restart,
	// scale, shutdown). It defaults to a logger that discards everything.
	Logger *slog.Logger
	// StructuredOutput writes each line of the children's output as a
	// record on Logger instead of the prefixed text on Stdout and Stderr.
	// A line that is a JSON object (a child logging with
	// slog.NewJSONHandler, say) becomes a record of its own: its "time",
	// "level" and "msg", its other fields as attributes, plus child =
	// index and pid (replacing the line's own child and pid fields). Any other line becomes an Info record with msg = the
	// line and attributes stream = "stdout" or "stderr", child and pid.
	// Records below Logger's level are dropped. It requires Logger.
	StructuredOutput bool
	// NoPrefix passes the children's output lines through unchanged, for
	// children that say who they are themselves.
	NoPrefix bool
}

// withDefaults returns a copy of c with the defaults filled in, or an error
// wrapping ErrInvalidConfig.
func (c Config) withDefaults() (Config, error) {
	invalid := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if len(c.Command) == 0 || c.Command[0] == "" {
		return invalid("Command is empty")
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"Size", int64(c.Size)},
		{"Grace", int64(c.Grace)},
		{"MaxRestarts", int64(c.MaxRestarts)},
		{"RestartWindow", int64(c.RestartWindow)},
		{"ReadyTimeout", int64(c.ReadyTimeout)},
		{"BackoffMin", int64(c.BackoffMin)},
		{"BackoffMax", int64(c.BackoffMax)},
		{"MaxRSS", c.MaxRSS},
		{"RSSInterval", int64(c.RSSInterval)},
		{"Min", int64(c.Min)},
		{"Max", int64(c.Max)},
		{"ScaleInterval", int64(c.ScaleInterval)},
		{"IdleTimeout", int64(c.IdleTimeout)},
		{"OrphanGrace", int64(c.OrphanGrace)},
	} {
		if f.v < 0 {
			return invalid("%s is negative (%d)", f.name, f.v)
		}
	}
	setDefault(&c.Grace, DefaultGrace)
	setDefault(&c.MaxRestarts, DefaultMaxRestarts)
	setDefault(&c.RestartWindow, DefaultRestartWindow)
	setDefault(&c.ReadyTimeout, DefaultReadyTimeout)
	setDefault(&c.BackoffMin, DefaultBackoffMin)
	setDefault(&c.BackoffMax, DefaultBackoffMax)
	setDefault(&c.RecycleExitCode, ExitRecycle)
	setDefault(&c.RSSInterval, DefaultRSSInterval)
	setDefault(&c.ScaleInterval, DefaultScaleInterval)
	setDefault(&c.IdleTimeout, DefaultIdleTimeout)
	setDefault(&c.OrphanGrace, DefaultOrphanGrace)
	if c.BackoffMax < c.BackoffMin {
		return invalid("BackoffMax (%v) is less than BackoffMin (%v)", c.BackoffMax, c.BackoffMin)
	}
	if c.RecycleExitCode < 1 || c.RecycleExitCode > 255 {
		return invalid("RecycleExitCode %d is not in 1..255", c.RecycleExitCode)
	}
	if c.Max > 0 {
		setDefault(&c.Min, 1)
		if c.Min > c.Max {
			return invalid("Min (%d) is greater than Max (%d)", c.Min, c.Max)
		}
		if c.Backlog == nil {
			return invalid("autoscaling (Max > 0) needs Backlog")
		}
		setDefault(&c.Size, c.Min)
		c.Size = min(max(c.Size, c.Min), c.Max)
	} else {
		if c.Min > 0 {
			return invalid("Min is set but Max is not")
		}
		setDefault(&c.Size, runtime.NumCPU())
	}
	if c.UntilEmpty && c.Backlog == nil {
		return invalid("UntilEmpty needs Backlog")
	}
	if c.StructuredOutput && c.Logger == nil {
		return invalid("StructuredOutput needs Logger")
	}
	if c.Stdout == nil {
		c.Stdout = os.Stdout
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Command = append([]string(nil), c.Command...)
	c.Env = append([]string(nil), c.Env...)
	return c, nil
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// CPUShare returns each child's share of this process's CPUs
// (runtime.GOMAXPROCS, which follows a container's CPU limit) when n
// children run at once: GOMAXPROCS / n, at least 1. A supervisor of Go
// children passes it on as their GOMAXPROCS, so that n processes together
// schedule goroutines on as many threads as there are CPUs instead of n
// times that, each waking threads the others' work then displaces.
func CPUShare(n int) int {
	return max(1, runtime.GOMAXPROCS(0)/max(n, 1))
}
