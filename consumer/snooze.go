package consumer

import (
	"errors"
	"time"
)

// Snooze returns the error a handler returns to put its task back for d,
// like River's JobSnooze: the task comes back after d (by the broker's
// clock) and runs again, and the attempt does not count: not toward its
// max attempts, nor as a failure in its record. It suits a task that
// cannot run yet (a rate limit, a resource not ready) and is not broken.
// A d of 0 or less brings it back at once. It may be wrapped
// (fmt.Errorf("rate limited: %w", consumer.Snooze(time.Minute))), and
// errors.Is(err, ErrSnoozed) reports it.
//
// The task's record is written (state queued, ScheduledAt when it is due)
// whether or not the task asked for one, so that the next delivery knows
// this one ended without a failure. A task whose deadline comes before it
// is due expires instead. Its lock, if it has one, is released while it
// waits; its unique key stays claimed.
func Snooze(d time.Duration) error { return &snoozeError{d: max(d, 0)} }

// ErrSnoozed is matched (errors.Is) by the errors Snooze returns, for
// middleware that tells a snooze from a failure. Returning ErrSnoozed
// itself does not snooze a task (it says for how long): use Snooze.
var ErrSnoozed = errors.New("task snoozed")

// OutcomeSnoozed means the handler returned Snooze: the task comes back after
// the delay, the attempt not counted.
const OutcomeSnoozed Outcome = "snoozed"

type snoozeError struct{ d time.Duration }

func (e *snoozeError) Error() string { return "task snoozed for " + e.d.String() }

// Is reports whether target is ErrSnoozed.
func (e *snoozeError) Is(target error) bool { return target == ErrSnoozed }

// snoozeOf returns the delay of a Snooze error.
func snoozeOf(err error) (time.Duration, bool) {
	var s *snoozeError
	if errors.As(err, &s) {
		return s.d, true
	}
	return 0, false
}

// snoozed makes the delivery, whose handler returned the Snooze error
// err, the oSnoozed row's: its record says it is queued again, due after
// the delay, with no result and no failure; its message comes back after
// the delay.
func (d *delivery) snoozed(err error) outcome {
	delay, _ := snoozeOf(err)
	d.delay = delay
	d.res.Result = nil
	d.res.ScheduledAt = time.Now().Add(delay).UTC()
	if dl, ok := deadline(d.t); ok {
		d.res.Deadline = dl
	}
	return oSnoozed
}
