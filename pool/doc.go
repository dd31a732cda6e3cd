// Package pool supervises a fixed or autoscaled number of child OS
// processes: the durable counterpart of Python's multiprocessing.Pool.
//
// A [Supervisor] starts [Config.Size] copies of [Config.Command], each in
// a session of its own (and so a process group of its own), and keeps them
// running:
//
//   - A child is ready once it says so, by writing a byte to the file
//     descriptor named in its environment by [EnvReadyFD] (call [Ready] in
//     a Go child; forq's own workers do once they run), or once it has run
//     for [Config.ReadyTimeout] (10s) without exiting, so that a command
//     that knows nothing of the descriptor works too.
//   - A child that exits unexpectedly (any exit code other than
//     [Config.RecycleExitCode], or killed by a signal) is restarted after an
//     exponential back-off with jitter, which starts over at
//     [Config.BackoffMin] whenever a child is ready: a ready child that
//     crashes is restarted after BackoffMin; only a child that keeps
//     failing to start waits longer and longer, up to [Config.BackoffMax].
//   - A child that exits before it is ready has failed to start, unless a
//     signal from outside killed it (SIGKILL, SIGTERM, ...: an operator,
//     the OOM killer). More than [Config.MaxRestarts] failures to start of
//     one child in a row within [Config.RestartWindow] is a restart storm:
//     the pool shuts down and [Supervisor.Run] returns an error wrapping
//     [ErrRestartStorm]. A crash of a ready child never counts, so a task
//     that crashes its worker again and again does not stop the pool.
//   - A child that exits with [Config.RecycleExitCode] (default
//     [ExitRecycle]) asked to be replaced, for instance after it ran its
//     maximum number of tasks; it is replaced at once and never counted as
//     a crash. Only a child that does so before it is ready and sooner than
//     its restart delay after its start waits out the rest of that delay,
//     which then doubles, so that a child that recycles at once every time
//     is not restarted in a tight loop.
//   - A child whose resident memory exceeds [Config.MaxRSS] receives SIGTERM,
//     drains and is replaced; this is not a crash either.
//   - With [Config.Max] set, the pool grows and shrinks between [Config.Min]
//     and [Config.Max] following [Config.Backlog]. With [Config.UntilEmpty]
//     the pool stops once the backlog is zero (close and join).
//
// Shutdown (the context given to Run is canceled, a restart storm, or the
// backlog is empty in UntilEmpty mode) is staged: SIGTERM to every child's
// PID, up to [Config.Grace] for the children to drain and exit, then SIGKILL
// to each remaining child's whole process group. Whenever a child exits, for
// whatever reason, its process group is SIGKILLed before the child is
// reaped, so no grandchild outlives the child that started it in its group.
//
// Nor does a descendant in another process group of the child's session
// (forq's exec tasks run in groups of their own). While Run runs, the
// process is a child subreaper (PR_SET_CHILD_SUBREAPER): a descendant of a
// child whose parent dies is reparented to the supervising process rather
// than to init. Once a child has exited, by a crash, a SIGKILL or at
// shutdown, every process still in its session gets SIGTERM, and SIGKILL
// after [Config.OrphanGrace] (200ms); the supervisor reaps them, and Run
// returns only once they are gone. While the child runs, the descendants it
// orphans (a shell that exits and leaves a background job) run on as they
// would under init, and are reaped when they exit. The supervisor finds
// them by scanning /proc when a child exits and whenever SIGCHLD arrives,
// and waits only for the PIDs it found, never for any child, so that
// os/exec's own waits in the process are left alone. A descendant that
// leaves the child's session (setsid, a daemon) escapes all this; if it is
// reparented to the supervising process, it is reaped when it exits only
// with [Config.ReapAll].
//
// Children are started with the Linux parent-death signal set to SIGTERM, so
// they are told to stop even when the supervisor itself is SIGKILLed. The
// signal goes to the child only, not to its process group: a child command
// that starts processes of its own must stop them when it receives SIGTERM
// (forq's own workers do). The parent-death signal is tied to the OS thread
// that forked the child (golang/go#27505), so each child is started and
// reaped by a goroutine locked to its own OS thread for the child's whole
// life; that thread is discarded when the child has been reaped.
//
// Each child finds in its environment [EnvIndex] (its index in the pool,
// from 0), [EnvPoolPID] (the supervisor's PID), [EnvRestarts] (how many
// times its slot was restarted after a crash before it) and [EnvReadyFD] (its
// readiness descriptor, 3, which it inherits; [Ready] closes it). Its standard output and
// standard error are passed through to [Config.Stdout] and [Config.Stderr]
// line by line, each line prefixed with "[<index> <pid>] ", or written as
// structured records on [Config.Logger] when [Config.StructuredOutput] is
// set: a child's JSON log line is then a record of its own, at its own
// level, with the child's index and PID added.
//
// The package runs on Linux only: it relies on the parent-death signal and
// on /proc. On other systems [New] returns an error wrapping
// [errors.ErrUnsupported].
package pool
