package forq

import (
	"fmt"
	"time"
)

// Names on the wire. They are part of forq's interface: operators inspect a
// running system with the stock nats CLI, so these stay stable.
const (
	// StreamTasks is the work-queue stream that holds queued tasks.
	StreamTasks = "FORQ_TASKS"
	// StreamDead is the stream of dead-lettered tasks: those that used up
	// their attempts, with the last error in HeaderError.
	StreamDead = "FORQ_DEAD"
	// BucketResults is the KV bucket of task results, keyed by task ID.
	BucketResults = "forq_results"
	// BucketCancel is the KV bucket of cancel requests, keyed by task ID.
	// Every worker watches it: a queued task found in it is dropped, a
	// running one has its context canceled.
	BucketCancel = "forq_cancel"

	// SubjectTasksPrefix prefixes a queue's task subject: forq.tasks.<queue>.
	SubjectTasksPrefix = "forq.tasks."
	// SubjectDeadPrefix prefixes a queue's dead-letter subject: forq.dead.<queue>.
	SubjectDeadPrefix = "forq.dead."
	// SubjectSchedulePrefix prefixes the subject of a delayed task's
	// schedule in StreamTasks: forq.schedule.<queue>.<task ID>. No worker's
	// consumer covers it; the broker publishes the task to its queue when
	// the schedule fires, and removes the schedule.
	SubjectSchedulePrefix = "forq.schedule."
	// SubjectPeriodicPrefix prefixes a periodic task's definition in
	// StreamTasks: forq.periodic.<name>. The broker publishes a new task to
	// the definition's queue at every tick.
	SubjectPeriodicPrefix = "forq.periodic."
)

// Headers of a task message. The body of the message is the payload.
const (
	// HeaderID carries the task ID. It is JetStream's own de-duplication
	// header, so a second enqueue of one ID inside the stream's duplicate
	// window is dropped by the broker.
	HeaderID = "Nats-Msg-Id"
	// HeaderType names the task type, which selects the handler.
	HeaderType = "Forq-Type"
	// HeaderMaxAttempts is the number of times the task may run, a decimal
	// integer; absent means DefaultMaxAttempts. The producer leaves it out
	// when the task uses the default.
	HeaderMaxAttempts = "Forq-Max-Attempts"
	// HeaderTimeout bounds one attempt, as a Go duration ("30s", "1m30s");
	// absent means no timeout.
	HeaderTimeout = "Forq-Timeout"
	// HeaderRecord asks the worker to record the task's progress and result
	// in BucketResults ("1"). Without it only failures are recorded.
	HeaderRecord = "Forq-Record"
	// HeaderDeadline is when a task expires if no worker has started it,
	// RFC 3339 with nanoseconds. The producer also sets the broker's
	// per-message TTL (Nats-TTL) so that the broker drops it then.
	HeaderDeadline = "Forq-Deadline"
	// HeaderTaskID carries the task ID where Nats-Msg-Id cannot: on a
	// task fired by a schedule (the broker drops Nats-Msg-Id then), on a
	// dead letter and on a task retried from the dead letters (whose
	// Nats-Msg-Id is a de-duplication key of their own). When present it
	// is the task's ID.
	HeaderTaskID = "Forq-Id"
	// HeaderError carries a dead-lettered task's last error.
	HeaderError = "Forq-Error"
	// HeaderAttempts carries the number of attempts a dead-lettered task made.
	HeaderAttempts = "Forq-Attempts"
	// HeaderQueue carries the queue a dead-lettered task came from.
	HeaderQueue = "Forq-Queue"
)

// Defaults shared by producers and workers.
const (
	// DefaultURL is where forq's processes look for the broker when no URL
	// is given: the embedded broker's default address.
	DefaultURL = "nats://127.0.0.1:4222"
	// DefaultQueue is the queue used when none is named.
	DefaultQueue = "default"
	// DefaultMaxAttempts is how many times a task runs before it is
	// dead-lettered, when the task does not say.
	DefaultMaxAttempts = 3
	// DefaultAckWait is how long the broker waits for a worker's ack (or
	// in-progress heartbeat) before it redelivers a task. Workers send
	// heartbeats while a task runs, so it bounds how quickly a dead worker's
	// tasks come back, not how long a task may run.
	DefaultAckWait = 30 * time.Second
	// DefaultResultTTL is how long a result stays in BucketResults.
	DefaultResultTTL = 24 * time.Hour
	// DefaultDuplicateWindow is how long the broker remembers task IDs to
	// drop duplicate enqueues.
	DefaultDuplicateWindow = 2 * time.Minute
)

// MetadataRecord is the metadata key, on a queue's consumer, that makes
// workers record the state and result of every task of the queue ("1"), as
// if each had been enqueued with Record. "forq record QUEUE" sets it.
const MetadataRecord = "forq.record"

// TaskSubject returns the subject tasks of queue are published to.
func TaskSubject(queue string) string { return SubjectTasksPrefix + queue }

// DeadSubject returns the subject dead-lettered tasks of queue go to.
func DeadSubject(queue string) string { return SubjectDeadPrefix + queue }

// ScheduleSubject returns the subject of the schedule that holds delayed
// task id of queue until it is due.
func ScheduleSubject(queue, id string) string { return SubjectSchedulePrefix + queue + "." + id }

// PeriodicSubject returns the subject of periodic task definition name.
func PeriodicSubject(name string) string { return SubjectPeriodicPrefix + name }

// ConsumerName returns the name of the durable consumer that all workers of
// queue share. It is the queue's name.
func ConsumerName(queue string) string { return queue }

// ValidateQueue reports whether name can be a queue name: 1 to 64 ASCII
// letters, digits, '-' and '_', so that it is one subject token and a valid
// consumer name, and not ending in "--high" or "--low", which name the
// consumers of a queue's priority levels (see Priority). The error wraps
// ErrInvalidQueue.
func ValidateQueue(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalidQueue)
	}
	if len(name) > 64 {
		return fmt.Errorf("%w: %q is longer than 64 characters", ErrInvalidQueue, name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("%w: %q has %q; use letters, digits, '-' and '_'", ErrInvalidQueue, name, r)
		}
	}
	if s, ok := reservedQueueSuffix(name); ok {
		return fmt.Errorf("%w: %q ends with %q, which is reserved for the consumers of a queue's priority levels", ErrInvalidQueue, name, s)
	}
	return nil
}

// ValidateType reports whether name can be a task type: 1 to 128 printable
// ASCII characters without spaces. The error wraps ErrInvalidTask.
func ValidateType(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty task type", ErrInvalidTask)
	}
	if len(name) > 128 {
		return fmt.Errorf("%w: task type %q is longer than 128 characters", ErrInvalidTask, name)
	}
	for _, r := range name {
		if r <= ' ' || r > '~' {
			return fmt.Errorf("%w: task type %q has %q; use printable ASCII without spaces", ErrInvalidTask, name, r)
		}
	}
	return nil
}
