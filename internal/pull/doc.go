// Package pull is forq's pull engine: it takes the tasks of a worker's
// queues from the broker and hands each to a runner goroutine.
//
// An Engine declares one JetStream pull consumer per priority level of each
// queue (the sources), and Run pulls from them on one subscription with one
// pull request in flight (puller.go), in the order the scheduler gives
// (scheduler.go), skipping levels known to be empty (hints.go), never for
// more tasks than the worker has free slots (Config.Concurrency). Each task
// goes through the dispatcher (dispatch.go) to a runner, which calls the
// worker's Runner.Deliver with it; final acknowledgements go out in
// batches through the Acker (acker.go).
//
// What a task is and how it ends (decode, run, settle) is the caller's:
// package consumer. The engine owns its goroutines: the pull loop, the
// runners, the acker and the settlements of abandoned deliveries. Run
// returns once they have all stopped, but for the runner of a delivery
// given up with Abandon, which ends when (if) its Deliver returns.
package pull
