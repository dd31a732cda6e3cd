// Package consumer pulls forq tasks from their queues and runs them.
//
// A Worker registers a Handler per task type, then Run pulls tasks from one
// or more queues and runs up to Concurrency handlers at once. Each task is
// acknowledged only after its handler returned nil. A handler error is
// retried after an exponential back-off with jitter, up to the task's max
// attempts; after the last one the task moves to forq.StreamDead with its
// error. An error wrapping ErrPermanent goes there at once; one wrapping
// Snooze(d) puts the task back for d, not counted as an attempt. A panic in a
// handler is an error, not a crash: the error names the panic's value and
// the file:line that panicked, and the stack goes to the worker's log.
//
// Attempts count a task's failures, not its deliveries: a delivery lost to
// a hand-back, a supervisor's death or a crash caused by another task is
// not one, while the crash of a process that ran the task alone is. A task
// redelivered after a lost delivery runs alone in its process to tell the
// two apart; see attempts.go.
//
// While a handler runs, the worker sends in-progress acks at a third of the
// consumer's ack wait, so a long task is not redelivered while its worker is
// alive, and a dead worker's tasks come back within the ack wait. The
// broker confirms them; a worker with none confirmed for the ack wait has
// lost the task (ErrLeaseLost). A handler that ignores its context past
// its timeout is abandoned (ErrAbandoned); see lease.go. A task the broker
// redelivers anyway (after its own restart, or a heartbeat that came late)
// is not run while a live worker still runs it: before it runs a
// redelivered task a worker asks the queue's workers, and a recorded
// task's record never moves back from a final state (see restart.go and
// record.go).
//
// Stopping is graceful: cancel Run's context and the worker stops fetching,
// lets running handlers finish within Config.Grace, then cancels their
// contexts and naks what is left so that it is redelivered at once. A stop
// that cannot wait is an abort (Worker.Abort): handlers are canceled at
// once and their tasks naked. StopContext makes the context of a worker
// process: canceled by SIGINT or SIGTERM, and aborting Run when the
// process's supervisor dies (see stop.go).
package consumer
