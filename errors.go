package forq

import "errors"

// Errors callers branch on with errors.Is. Functions wrap them with detail.
var (
	// ErrInvalidQueue means a queue name is empty, too long or has a
	// character that cannot be a subject token.
	ErrInvalidQueue = errors.New("invalid queue name")
	// ErrInvalidTask means a task is malformed: bad type, ID, attempts or
	// timeout.
	ErrInvalidTask = errors.New("invalid task")
	// ErrInvalidOption means an option was given a value it cannot take.
	ErrInvalidOption = errors.New("invalid option")
	// ErrPayloadTooLarge means a payload (with its headers) is larger than
	// the broker accepts in one message.
	ErrPayloadTooLarge = errors.New("payload too large")
	// ErrResultNotFound means no result is recorded for a task ID: the task
	// does not exist, did not ask for a record, or its result expired.
	ErrResultNotFound = errors.New("result not found")
	// ErrTaskFailed means a task ended without success: it was dead-lettered
	// or canceled. A Result with that state carries the task's own error.
	ErrTaskFailed = errors.New("task failed")
	// ErrCanceled is the cause of a canceled task's context, and the error
	// recorded for it.
	ErrCanceled = errors.New("task canceled")
	// ErrFinished means a task cannot be canceled: it has already
	// finished.
	ErrFinished = errors.New("task already finished")
)
