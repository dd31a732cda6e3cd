package consumer

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Progress. A handler that calls Task.InProgress says that it is still
// working on its task. The worker then renews the task's lease at once (a
// heartbeat the broker confirms, as its own are: lease.go) and, if the task
// has a timeout, moves the handler's local deadline to a whole timeout from
// now, and the time it would be abandoned with it. So a task's timeout
// bounds how long its handler may go without progress: a handler that
// reports progress runs on, one that hangs still ends a timeout after its
// last report.

// errNotRunning is InProgress's error for a task that is not running on
// this worker: a Task not from a delivery, or one whose handler returned.
var errNotRunning = errors.New("consumer: InProgress: the task is not running (its handler returned, or it was not delivered)")

// localDeadline is the handler's context of a task with a timeout: canceled
// with the timeout's cause at its deadline, which InProgress moves. Its
// Deadline is the deadline as it stands when asked.
type localDeadline struct {
	context.Context // canceled, with the timeout's cause, by timer
	timeout         time.Duration
	cause           error // of the timeout
	timer           *time.Timer

	mu sync.Mutex
	at time.Time
}

// newDeadline returns ctx with a deadline timeout from now; at it, cancel
// is called with cause. stop must be called when the handler returns.
func newDeadline(ctx context.Context, cancel context.CancelCauseFunc, timeout time.Duration, cause error) *localDeadline {
	d := &localDeadline{Context: ctx, timeout: timeout, cause: cause, at: time.Now().Add(timeout)}
	d.timer = time.AfterFunc(timeout, func() { cancel(cause) })
	return d
}

// Deadline returns the handler's deadline as it stands now.
func (d *localDeadline) Deadline() (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.at, true
}

// extend moves the deadline to a timeout after now, unless the context has
// ended already. It returns the new deadline.
func (d *localDeadline) extend(now time.Time) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.Err() != nil || !d.timer.Stop() {
		return d.at, false // timed out (or canceled) already
	}
	d.at = now.Add(d.timeout)
	d.timer.Reset(d.timeout)
	return d.at, true
}

func (d *localDeadline) stop() { d.timer.Stop() }

// InProgress tells the broker the task is still being worked on, renewing
// its lease, and, if the task has a timeout, gives the handler a whole
// timeout from now: its context's deadline moves (see the package's
// progress.go). The worker renews the lease on its own while the handler
// runs; a handler calls InProgress to report progress of a task that
// would otherwise time out. After the handler's context has ended it
// renews nothing, and returns the context's cause.
func (t *Task) InProgress() error {
	r := t.rn
	if t.msg == nil || r == nil {
		return errNotRunning
	}
	w := r.w
	now := time.Now()
	w.mu.Lock()
	if r.t != t || r.msg == nil || r.abandoned != nil {
		lost := r.t == t && r.lost
		w.mu.Unlock()
		if lost {
			return ErrLeaseLost
		}
		return errNotRunning
	}
	b := beat{r.msg, r.idx, r.gen}
	if r.beat > 0 {
		r.next = now.Add(r.beat)
	}
	var err error
	if d := t.dl; d != nil {
		if at, ok := d.extend(now); ok {
			r.abandonAt = at.Add(w.abandonGrace)
		} else if err = context.Cause(d); err == nil {
			err = d.cause // its timer fired; the cancel is on its way
		}
	}
	w.mu.Unlock()
	if err != nil {
		return err
	}
	w.sendBeat(b, now)
	return nil
}
