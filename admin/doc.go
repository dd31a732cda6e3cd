// Package admin inspects and operates forq's queues: what "forq stats",
// "forq tasks", "forq dead", "forq pause" and "forq schedule" do, usable
// from Go (and by a web page).
//
// An Inspector, made by New on a NATS connection, answers questions about
// the queues and changes them:
//
//   - Stats: each queue's queued, running, retrying, scheduled and dead
//     tasks, its pause, what its workers did in the last minute, and the
//     live workers.
//   - Tasks: the tasks of a queue, running (with their worker), retrying,
//     queued or scheduled (delayed, not due yet), each with a bounded
//     preview of its payload.
//   - DeadLetters, FindDeadLetters, RetryDead, PurgeDead: the tasks that
//     used up their attempts, in forq.StreamDead.
//   - PurgeQueue: drop a queue's tasks (delayed ones stay).
//   - Pause, Resume, Paused: JetStream's consumer pause, for a queue.
//   - SetRecordAll: record every task of a queue, as if each asked.
//   - AddSchedule, Schedule, Schedules, RemoveSchedule: periodic tasks,
//     kept and fired by the broker.
//
// Reading never creates anything on the broker: on a broker where no forq
// process ever ran, Stats is empty and Tasks reports an unknown queue. A
// method that writes (Pause, SetRecordAll, AddSchedule, RetryDead)
// declares forq's streams and buckets first if they are missing, as a
// producer does, with Config's settings.
//
// What "running" means: a task whose handler a live worker runs now. The
// broker knows a task only as delivered to a worker and not yet
// acknowledged (JetStream's ack pending): that covers a task a handler
// runs, but also one handed back and waiting for its redelivery (a failed
// attempt's back-off, a worker's graceful stop, a snooze, a busy lock),
// and one a worker has fetched and not started. So each worker lists the
// tasks it runs in its status in forq.BucketWorkers (rewritten every few
// seconds, gone when the worker stops), and Stats and Tasks call running
// what a live worker lists, and retrying the rest of the ack pending.
//
// admin never imports producer or consumer, nor they it; what they share
// lives in forq's root package and under internal/.
package admin
