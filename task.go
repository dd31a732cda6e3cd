package forq

import (
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Task is one unit of work: a type that selects the handler, and a payload.
// On the wire a task is one message on TaskSubject(Queue); see the Header
// constants.
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

// Validate checks the task's fields and fills the defaults (ID, Queue,
// MaxAttempts). The error wraps ErrInvalidTask or ErrInvalidQueue.
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
	} else if len(t.ID) > 128 {
		return fmt.Errorf("%w: ID %q is longer than 128 characters", ErrInvalidTask, t.ID)
	} else {
		for _, r := range t.ID {
			if r <= ' ' || r > '~' || r == '.' || r == '*' || r == '>' {
				return fmt.Errorf("%w: ID %q has %q; use printable ASCII without spaces, '.', '*' or '>'", ErrInvalidTask, t.ID, r)
			}
		}
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
	if !t.Deadline.IsZero() && !t.Deadline.After(time.Now()) {
		return fmt.Errorf("%w: deadline %s has passed", ErrInvalidTask, t.Deadline.Format(time.RFC3339))
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
	Host        string    `json:"host,omitempty"`
}
