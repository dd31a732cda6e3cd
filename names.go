package forq

import (
	"fmt"
	"time"
)

// Names on the wire. They are part of forq's interface: operators inspect a
// running system with the stock nats CLI, so these stay stable. The
// subjects and consumer names made from them (forq.tasks.<queue>, ...) are
// built in one place inside the module (internal/wire) and listed in the
// README.
const (
	// StreamTasks is the work-queue stream that holds queued tasks.
	StreamTasks = "FORQ_TASKS"
	// StreamDead is the stream of dead-lettered tasks: those that used up
	// their attempts, with the last error in a header (see the README).
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
	// SubjectBrokerHealth is where a forq broker answers health requests
	// with a JSON object: {"healthy": true} or {"healthy": false,
	// "storage_full": true, "error": "..."}. No stream stores it; a plain
	// nats-server has no responder on it.
	SubjectBrokerHealth = "forq.broker.health"
	// SubjectRunningPrefix prefixes the subject on which a worker asks, before
	// it runs a redelivered task of a queue, whether another worker still
	// runs that task: forq.running.<queue>, a core NATS request whose body
	// is the task's sequence in StreamTasks. Only a worker that runs it
	// answers (with its PID and host), after telling the broker the task is
	// in progress; the asker then hands the delivery back rather than start
	// a second run.
	SubjectRunningPrefix = "forq.running."
	// SubjectOutputPrefix prefixes the subjects on which a worker
	// publishes the output of an exec task that asks for it (ExecSpec
	// Stream) as the command writes it: forq.output.<task ID>.stdout and
	// forq.output.<task ID>.stderr, one core NATS message per chunk the
	// command wrote. No stream stores them: only who subscribes before the
	// command runs gets them.
	SubjectOutputPrefix = "forq.output."
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
	// heartbeats while a task runs (every third of it), so it bounds how
	// quickly a dead worker's tasks come back, not how long a task may run.
	DefaultAckWait = 3 * time.Second
	// LegacyAckWait is the DefaultAckWait of forq before 3 s. A queue's
	// consumer declared with it is moved to DefaultAckWait by the first
	// worker that declares the queue with the default ack wait; a consumer
	// with any other ack wait keeps its own.
	LegacyAckWait = 30 * time.Second
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
			return fmt.Errorf("%w: %q has %q; use ASCII letters, digits, '-' and '_'", ErrInvalidQueue, name, r)
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
