package forq

import (
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Task is one unit of work: a type that selects the handler, and a payload.
// On the wire a task is one message on TaskSubject(Queue), its metadata in
// headers (Nats-Msg-Id, Forq-Type, ...; see the README).
type Task struct {
	// ID identifies the task. Empty means a new UUIDv7 is assigned on
	// enqueue, so IDs sort by time.
	ID string
	// Queue is the queue the task goes to; empty means DefaultQueue.
	Queue string
	// Type selects the handler that runs the task.
	Type string
	// Payload is opaque to forq; JSON by convention.
	Payload []byte
	// MaxAttempts is how many times the task may run; 0 means
	// DefaultMaxAttempts.
	MaxAttempts int
	// Timeout bounds each attempt; 0 means none.
	Timeout time.Duration
	// Record asks workers to record the task's state and result in
	// BucketResults, so that it can be waited for or looked up. Failures
	// are recorded whatever Record says.
	Record bool
	// Deadline, if not zero, is when the task expires if no worker has
	// started it: the broker drops it (per-message TTL) and a worker that
	// receives it later records it as expired without running it.
	Deadline time.Time
	// At, if not zero, makes the task a delayed one: the broker holds it
	// and queues it at At, by the broker's clock. Not with Delay.
	At time.Time
	// Delay, if positive, makes the task a delayed one: the broker queues
	// it Delay after the enqueue, measured by the broker's clock (the
	// producer's clock may be off). Not with At.
	Delay time.Duration
	// LockKey, if set, keeps the task from running while another task
	// with the same lock key runs, anywhere (see BucketLocks).
	LockKey string
	// UniqueKey, if set, keeps a second task with the same key from being
	// enqueued while this one is queued or running (see BucketUnique).
	UniqueKey string
	// Priority is the task's level within its queue; the zero value is
	// PriorityNormal. Workers start higher levels first (see Priority).
	Priority Priority
}

// NewID returns a new task ID: a UUIDv7, which sorts by creation time.
func NewID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// NewV7 fails only when the system's random source does.
		return uuid.NewString()
	}
	return id.String()
}

// ValidateID reports whether id can be a task ID: 1 to 128 ASCII letters,
// digits, '-', '_', '=' and '/'. An ID is a subject token (so no '.') and
// the key of the task's result and cancel request in the broker's KV
// buckets (which take nothing else). The error wraps ErrInvalidTask.
func ValidateID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty task ID", ErrInvalidTask)
	}
	if len(id) > 128 {
		return fmt.Errorf("%w: task ID %q is longer than 128 characters", ErrInvalidTask, id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '=' || r == '/') {
			return fmt.Errorf("%w: task ID %q has %q; use ASCII letters, digits, '-', '_', '=' and '/'", ErrInvalidTask, id, r)
		}
	}
	return nil
}

// Validate checks the task's fields and fills the defaults (ID, Queue,
// MaxAttempts). It is the one check of a task's settings, whether they
// come from its fields or from producer options: each rule has one error,
// which wraps ErrInvalidTask (ErrInvalidQueue for the queue name).
func (t *Task) Validate() error {
	if t.Queue == "" {
		t.Queue = DefaultQueue
	}
	if err := ValidateQueue(t.Queue); err != nil {
		return err
	}
	if err := ValidateType(t.Type); err != nil {
		return err
	}
	if t.ID == "" {
		t.ID = NewID()
	} else if err := ValidateID(t.ID); err != nil {
		return err
	}
	if !t.Priority.Valid() {
		return fmt.Errorf("%w: priority %d: use PriorityLow, PriorityNormal or PriorityHigh", ErrInvalidTask, t.Priority)
	}
	if t.MaxAttempts < 0 {
		return fmt.Errorf("%w: max attempts %d is negative", ErrInvalidTask, t.MaxAttempts)
	}
	if t.MaxAttempts == 0 {
		t.MaxAttempts = DefaultMaxAttempts
	}
	if t.Timeout < 0 {
		return fmt.Errorf("%w: timeout %s is negative", ErrInvalidTask, t.Timeout)
	}
	if err := t.validateKeys(); err != nil {
		return err
	}
	return t.validateTimes()
}

// validateKeys checks the lock and unique keys, if set.
func (t *Task) validateKeys() error {
	if t.LockKey != "" {
		if err := ValidateKey("lock", t.LockKey); err != nil {
			return err
		}
	}
	if t.UniqueKey != "" {
		if err := ValidateKey("unique", t.UniqueKey); err != nil {
			return err
		}
	}
	return nil
}

// validateTimes checks the deadline, the delay and the time the task is
// due.
func (t *Task) validateTimes() error {
	if !t.Deadline.IsZero() && !t.Deadline.After(time.Now()) {
		return fmt.Errorf("%w: deadline %s has passed", ErrInvalidTask, t.Deadline.Format(time.RFC3339))
	}
	if t.Delay < 0 {
		return fmt.Errorf("%w: delay %s is negative", ErrInvalidTask, t.Delay)
	}
	if t.Delay > 0 && !t.At.IsZero() {
		return fmt.Errorf("%w: a task has a delay or a time (At), not both", ErrInvalidTask)
	}
	if !t.At.IsZero() && !t.Deadline.IsZero() && !t.Deadline.After(t.At) {
		return fmt.Errorf("%w: deadline %s is not after the time the task is due, %s", ErrInvalidTask,
			t.Deadline.UTC().Format(time.RFC3339Nano), t.At.UTC().Format(time.RFC3339Nano))
	}
	return nil
}

// State is where a task is in its life.
type State string

// The states a Result can be in.
const (
	// StateQueued: enqueued, not started (or waiting for a retry).
	StateQueued State = "queued"
	// StateRunning: a worker is running it.
	StateRunning State = "running"
	// StateSucceeded: a handler returned nil; final.
	StateSucceeded State = "succeeded"
	// StateFailed: an attempt failed and the task will be retried.
	StateFailed State = "failed"
	// StateDead: the task used up its attempts (or failed permanently) and
	// was moved to StreamDead; final.
	StateDead State = "dead"
	// StateCanceled: the task was canceled; final.
	StateCanceled State = "canceled"
	// StateExpired: the task was not started before its deadline and was
	// dropped without running; final.
	StateExpired State = "expired"
)

// Final reports whether s is an end state: succeeded, dead or canceled.
func (s State) Final() bool {
	return s == StateSucceeded || s == StateDead || s == StateCanceled || s == StateExpired
}

// Result is what BucketResults holds for a task, JSON-encoded under the
// task's ID.
type Result struct {
	ID         string    `json:"id"`
	Queue      string    `json:"queue"`
	Type       string    `json:"type"`
	State      State     `json:"state"`
	Attempts   int       `json:"attempts"`
	Error      string    `json:"error,omitempty"`
	Result     []byte    `json:"result,omitempty"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	WorkerPID  int       `json:"worker_pid,omitempty"`
	// Deadline is when the task expires if not started; zero if never.
	Deadline time.Time `json:"deadline,omitzero"`
	// ScheduledAt is when a delayed task is due, by the broker's clock;
	// set on its queued record.
	ScheduledAt time.Time `json:"scheduled_at,omitzero"`
	// Host names where the task ran: its worker's name
	// (consumer.Config.Name), by default the host name.
	Host string `json:"host,omitempty"`
	// Failures counts the failed attempts of the task's message Seq: an
	// error, a panic, a timeout, or a crash of a worker process that ran
	// it alone. Attempts is Failures+1 while an attempt runs.
	Failures int `json:"failures,omitempty"`
	// Seq is the stream sequence of the task's message these counts are
	// for (a task retried from the dead letters is a new message and
	// starts again from no failures); 0 on a record no worker wrote.
	Seq uint64 `json:"seq,omitempty"`
	// Run is the delivery of that message (with a lock key: its run) that
	// wrote this record. A worker that finds a record of an older run,
	// or of a run still "running", knows that a delivery was lost.
	Run int `json:"run,omitempty"`
	// Alone is true from the start of a run that its worker runs alone in
	// its process (no other handler beside it) until that run's outcome
	// is written: found on a later run, it means that process died
	// while running only this task, a failure of the task.
	Alone bool `json:"alone,omitempty"`
	// History lists the failed attempts of the task's message Seq, oldest
	// first: the last MaxHistory of them, each error cut to
	// MaxHistoryError bytes.
	History []Attempt `json:"history,omitempty"`
}

// Bounds of Result.History, which keep a record small.
const (
	// MaxHistory is how many failed attempts a record keeps: the last ones.
	MaxHistory = 10
	// MaxHistoryError is how many bytes of each attempt's error a record
	// keeps (cut at a character's boundary, "…" appended).
	MaxHistoryError = 512
)

// Attempt is one failed attempt of a task, in its record's History.
type Attempt struct {
	// Attempt is its number: 1 for the first run.
	Attempt int `json:"attempt"`
	// Host and PID name the worker process that ran it.
	Host string `json:"host,omitempty"`
	PID  int    `json:"pid,omitempty"`
	// At is when it ended.
	At time.Time `json:"at,omitzero"`
	// Error is why it failed, at most MaxHistoryError bytes of it.
	Error string `json:"error"`
}
