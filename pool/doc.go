// Package pool supervises a fixed or autoscaled number of child OS
// processes: the durable counterpart of Python's multiprocessing.Pool.
//
// A [Supervisor] starts [Config.Size] copies of [Config.Command], each in
// its own process group, and keeps them running:
//
//   - A child that exits unexpectedly (any exit code other than
//     [Config.RecycleExitCode], or killed by a signal) is restarted after an
//     exponential back-off with jitter. More than [Config.MaxRestarts] such
//     crashes of one child within [Config.RestartWindow] is a restart storm:
//     the pool shuts down and [Supervisor.Run] returns an error wrapping
//     [ErrRestartStorm].
//   - A child that exits with [Config.RecycleExitCode] (default
//     [ExitRecycle]) asked to be replaced, for instance after it ran its
//     maximum number of tasks; it is replaced at once and never counted as a
//     crash.
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
// A grandchild that moves itself to another process group or session escapes
// this; a command that does so must stop such processes itself.
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
// from 0) and [EnvPoolPID] (the supervisor's PID). Its standard output and
// standard error are passed through to [Config.Stdout] and [Config.Stderr]
// line by line, each line prefixed with "[<index> <pid>] ", or written as
// structured records on [Config.Logger] when [Config.StructuredOutput] is
// set.
//
// The package runs on Linux only: it relies on the parent-death signal and
// on /proc. On other systems [New] returns an error wrapping
// [errors.ErrUnsupported].
package pool
