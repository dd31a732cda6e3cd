package forq

import "errors"

// Errors callers branch on with errors.Is. Functions wrap them with detail.
//
// Bad input has one sentinel per rule, whichever way the value was given:
// a negative timeout is ErrInvalidTask as a Task field and as
// producer.WithTimeout(-1). ErrInvalidTask and ErrInvalidQueue are kinds
// of ErrInvalidOption, so errors.Is(err, ErrInvalidOption) holds for
// every fault of a caller's input; a caller that needs to know which kind
// asks for the narrower one.
var (
	// ErrInvalidOption means a setting was given a value it cannot take:
	// an option, a field of a Config, or (as ErrInvalidTask and
	// ErrInvalidQueue, which wrap it) a task's field or a queue name. An
	// option given its zero value (producer.WithTimeout(0)) is this
	// error: leave the option out for the default.
	ErrInvalidOption = errors.New("invalid option")
	// ErrInvalidQueue means a queue name is empty, too long or has a
	// character that cannot be a subject token. It is a kind of
	// ErrInvalidOption.
	ErrInvalidQueue error = &kindError{"invalid queue name", ErrInvalidOption}
	// ErrInvalidTask means a task's setting is malformed: its type, ID,
	// priority, attempts, timeout, keys, deadline, delay or time, given as
	// a field of Task or as a producer option. It is a kind of
	// ErrInvalidOption.
	ErrInvalidTask error = &kindError{"invalid task", ErrInvalidOption}
	// ErrPayloadTooLarge means a payload (with its headers) is larger than
	// the broker accepts in one message.
	ErrPayloadTooLarge = errors.New("payload too large")
	// ErrResultNotFound means no result is recorded for a task ID: the task
	// does not exist, did not ask for a record, has not started yet (a
	// recorded task without a delay or a deadline is recorded when a
	// worker starts it: see producer.WithRecord), or its result expired.
	ErrResultNotFound = errors.New("result not found")
	// ErrNotRecorded means a wait is for a task that will never be
	// recorded: it was enqueued without a record (producer.WithRecord)
	// to a queue that does not record every task, so no result will come
	// unless it fails.
	ErrNotRecorded = errors.New("task not recorded")
	// ErrTaskFailed means a task ended without success: it was dead-lettered
	// or canceled. A Result with that state carries the task's own error.
	ErrTaskFailed = errors.New("task failed")
	// ErrCanceled is the cause of a canceled task's context, and the error
	// recorded for it.
	ErrCanceled = errors.New("task canceled")
	// ErrFinished means a task cannot be canceled: it has already
	// finished.
	ErrFinished = errors.New("task already finished")
	// ErrStorageFull means the broker cannot store what it is sent: its
	// JetStream storage limit is reached (by default 75% of the disk's
	// free space when it started), or its disk is full and JetStream is
	// disabled until space is freed. Nothing was enqueued; the same call
	// succeeds once space is back, with no restart.
	ErrStorageFull = errors.New("broker storage full")
	// ErrServerTooOld means the NATS server is older than a feature
	// asked for needs: forq as a whole needs 2.11 (per-message TTLs),
	// delayed tasks 2.12 (message schedules), periodic schedules 2.14.
	// The error names the feature, the version it needs and the server's
	// version; nothing was enqueued or stored. The README's "Server
	// versions" has the table.
	ErrServerTooOld = errors.New("NATS server too old")
)

// kindError is a sentinel that is a kind of a broader one: errors.Is of an
// error wrapping it holds for both.
type kindError struct {
	msg string
	of  error
}

func (e *kindError) Error() string { return e.msg }

// Unwrap returns the broader sentinel.
func (e *kindError) Unwrap() error { return e.of }
