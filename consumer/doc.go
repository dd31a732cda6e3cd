// Package consumer pulls forq tasks from their queues and runs them.
//
// A Worker registers a Handler per task type, then Run pulls tasks from one
// or more queues and runs up to Concurrency handlers at once. Each task is
// acknowledged only after its handler returned nil. A handler error is
// retried after an exponential back-off with jitter, up to the task's max
// attempts; after the last one the task moves to forq.StreamDead with its
// error. An error wrapping ErrPermanent goes there at once. A panic in a
// handler is an error, not a crash. A task whose delivery count is already
// past its attempts (its workers kept dying while running it) is
// dead-lettered without running.
//
// While a handler runs, the worker sends in-progress acks at a third of the
// consumer's ack wait, so a long task is not redelivered while its worker is
// alive, and a dead worker's tasks come back within the ack wait.
//
// Stopping is graceful: cancel Run's context and the worker stops fetching,
// lets running handlers finish within Config.Grace, then cancels their
// contexts and naks what is left so that it is redelivered at once.
package consumer
