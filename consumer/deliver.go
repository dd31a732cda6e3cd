package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/wire"
)

// The delivery path.
//
// Each task the pull engine hands a runner goes through four steps:
//
//   - decode: its message into a Task (its headers: wire.Decode);
//   - admit: the checks before it runs, each of which may end the
//     delivery: a run of it still going on elsewhere (restart.go), its
//     lock (lock.go), its attempts (attempts.go), its deadline
//     (expire.go) and a cancel request (cancel.go);
//   - run: its handler, with its deadline, heartbeats, lease and panic
//     guard (runHandler);
//   - settle: its outcome, one row of the outcome table (settle.go), which
//     says what is recorded, how the task is acknowledged, what is logged
//     and what the Observer is told.

// delivery is one delivery of a task on its way through the steps above.
// It lives on its runner's stack: the paths that record a result copy it
// to the heap (escape), so that a task that succeeds without a record
// costs no allocation for it.
type delivery struct {
	t   *Task
	log taskLog
	res forq.Result
	// record: the task's record is written at each step (it was asked
	// for, its queue records every task, or it runs alone).
	record   bool
	timeout  time.Duration // Forq-Timeout, 0 for none
	ackWait  time.Duration // of its queue's consumer: its lease
	delivery int           // the broker's delivery count
	// leased is when its lease is known to have started: when the engine
	// received the message (the broker's ack wait started no later), or
	// the in-progress ack a redelivery sends before its slow checks. Zero
	// if unknown: then the start of its handler.
	leased time.Time
	// lockKey is its lock key (Forq-Lock), "" for none; deadline is when
	// it expires unstarted (Forq-Deadline), zero for never. Both are also
	// what the lock and expired rows log.
	lockKey  string
	deadline time.Time
	// hard is the parent of the handler's context (canceled if the
	// task's lock is lost), r the runner it runs on.
	hard context.Context
	r    *runner

	// What settle reports beside the outcome: the error (of a failure,
	// or why the delivery ended), the delay of a nak, and the details a
	// rarer outcome logs.
	err    error
	delay  time.Duration
	holder string
	seen   forq.State
}

// Deliver runs one delivery of a task (see deliver), counted in InFlight
// while it runs and in Processed once it is over. It reports whether its
// handler was abandoned (lease.go): then the abandonment did the counting,
// and freed the task's slot.
func (r *runner) Deliver(hard context.Context, pd pull.Delivery) (abandoned bool) {
	w := r.w
	// Counted around deliver, not with defers: deliver's one defer is
	// then open-coded (inline at each return), which the compiler gives
	// up on for three defers and this many returns.
	w.inflight.Add(1)
	if w.deliver(hard, r, pd) {
		return true
	}
	w.inflight.Add(-1)
	w.processed.Add(1)
	return false
}

// deliver takes one delivery of a task through decode, admit, run and
// settle. It reports whether the handler was abandoned: then the task was
// settled by the abandonment, not here.
func (w *Worker) deliver(hard context.Context, r *runner, pd pull.Delivery) (abandoned bool) {
	var d delivery
	w.decode(&d, hard, r, pd)
	o := w.admit(&d)
	if d.t.lock != nil {
		// Released when the delivery is over, however it ends.
		defer w.unlockTask(&d.log, d.t)
	}
	if o == oRun {
		if o, abandoned = w.run(&d); abandoned {
			return true
		}
	}
	w.settle(&d, o)
	return false
}

// decode makes the task of pd's message, and what its delivery needs.
func (w *Worker) decode(d *delivery, hard context.Context, r *runner, pd pull.Delivery) {
	m := pd.Msg
	th := wire.Decode(m.Headers(), m.Reply())
	t := &Task{ID: th.ID, Queue: pd.Queue, Type: th.Type, Payload: m.Data(), Attempt: 1, MaxAttempts: th.MaxAttempts,
		Header: m.Headers(), Priority: pd.Priority, msg: m}
	d.t, d.log = t, taskLog{w: w, t: t}
	d.record = th.Record || w.recordsQueue(pd.Queue)
	d.res = forq.Result{ID: t.ID, Queue: pd.Queue, Type: t.Type, Attempts: 1, WorkerPID: w.pid, Host: w.name}
	d.timeout, d.ackWait, d.delivery, d.leased = th.Timeout, pd.AckWait, th.Delivered, pd.Received
	d.lockKey, d.deadline = th.Lock, th.Deadline
	if th.Err != nil {
		// Such a task cannot run as its producer meant: dead-letter it.
		d.err = fmt.Errorf("%w: %w", ErrPermanent, th.Err)
	}
	d.hard, d.r = hard, r
}

// admit decides whether the task runs now: it returns oRun, or the outcome
// that ends the delivery without running it.
func (w *Worker) admit(d *delivery) outcome {
	if d.err != nil {
		return oFailed // a malformed header: it wraps ErrPermanent
	}
	if d.delivery <= 1 {
		return w.check(d)
	}
	if d.leaseExpired(time.Now()) {
		return oStale // see lease.go
	}
	// A redelivery's checks (a question to the other workers, its lock,
	// its record read) may take longer than its ack wait on a loaded
	// broker: its lease is kept meanwhile.
	k := keepLease(d.t.msg, d.ackWait)
	o := w.check(d)
	if at := k.stop(); !at.IsZero() {
		d.leased = at
	}
	return o
}

// check is admit's checks of a well-formed task.
func (w *Worker) check(d *delivery) outcome {
	t := d.t
	if d.delivery > 1 && w.runsElsewhere(d) {
		return oElsewhere // its first run goes on elsewhere: see restart.go
	}
	run := d.delivery
	if key := d.lockKey; key != "" && !w.isCanceled(t.ID) {
		if o := w.takeLock(d, key); o != oRun {
			return o
		}
		run = t.lock.runs
	}
	if run > 1 {
		// A redelivery: the rare path, where attempts are counted.
		if o := w.redelivered(d); o != oRun {
			return o
		}
		d.res.Attempts = t.Attempt
		// A run alone has its start recorded: its outcome must be too.
		d.record = d.record || t.alone
	}
	if dl := d.deadline; !dl.IsZero() && run == 1 && time.Now().After(dl) {
		d.res.Deadline = dl
		d.res.Error = "not started before its deadline " + dl.Format(time.RFC3339Nano)
		return oExpired
	}
	if w.isCanceled(t.ID) {
		return d.canceled()
	}
	return oRun
}

// canceled ends a canceled task's delivery: recorded as canceled, removed
// from the queue, not retried.
func (d *delivery) canceled() outcome {
	d.res.Error = forq.ErrCanceled.Error()
	return oCanceled
}

// run calls the task's handler (runHandler) and returns the outcome to
// settle; or it reports that the handler was abandoned.
func (w *Worker) run(d *delivery) (o outcome, abandoned bool) {
	t := d.t
	h, ok := w.handlers[t.Type]
	d.res.StartedAt = time.Now().UTC()
	if d.leaseExpired(d.res.StartedAt) {
		// It waited for this runner past its lease: its redelivery runs
		// it (see lease.go).
		return oStale, false
	}
	if !ok {
		d.err = fmt.Errorf("%w %q on this worker (it handles %v)", ErrNoHandler, t.Type, w.Types())
		d.res.FinishedAt = time.Now().UTC()
		return oFailed, false
	}
	w.observeStart(t, d.res.StartedAt)
	var mark *forq.Result
	if t.alone {
		mark = escape(d.res)
	} else if d.record {
		d.res.State = forq.StateRunning
		if o := w.recordRunning(d); o != oRun {
			return o, false // canceled, or it ended on another run: see record.go
		}
	}
	out, end, err := w.runHandler(d.hard, d.r, &d.log, t, h, d.timeout, d.ackWait, d.leased, d.res.StartedAt, mark)
	if errors.Is(err, errAbandonedRun) {
		return 0, true
	}
	d.res.FinishedAt = end.UTC()
	if mark != nil {
		d.res.StartedAt = mark.StartedAt
	}
	d.res.Result = out
	switch {
	case err == nil:
		return oSucceeded, false
	case errors.Is(err, ErrLeaseLost):
		// Another delivery of the task may run it now: settling it here
		// would ack or nak that one's message (see lease.go).
		d.err = err
		return oLeaseLost, false
	case errors.Is(err, forq.ErrCanceled):
		return d.canceled(), false
	case errors.Is(err, errUnmarked):
		// Could not start alone: handed back after a back-off.
		d.err = err
		return oUnmarked, false
	case errors.Is(err, errStopping):
		// Stopped before it finished: redelivered at once, elsewhere.
		d.err = err
		return oHandedBack, false
	case errors.Is(err, ErrSnoozed):
		// Put back for later, no failure: see snooze.go.
		return d.snoozed(err), false
	}
	d.err = err
	return oFailed, false
}

// escape returns a copy of r on the heap, for the paths that keep or
// record a task's result. Most tasks succeed without a record, and then
// their delivery's Result stays on its stack: one allocation fewer per
// task.
func escape(r forq.Result) *forq.Result { return &r }

// taskLog builds a task's logger when it is first needed: most tasks
// succeed and log nothing, and slog's With allocates even when the level
// is off.
type taskLog struct {
	w *Worker
	t *Task
	l *slog.Logger
}

func (x *taskLog) get() *slog.Logger {
	if x.l == nil {
		t := x.t
		x.l = x.w.log.With("task", t.ID, "queue", t.Queue, "type", t.Type, "attempt", t.Attempt, "pid", x.w.pid)
	}
	return x.l
}

// errAbandonedRun is what runHandler returns to a runner whose handler was
// abandoned (lease.go): the task is not its to settle any more.
var errAbandonedRun = errors.New("handler abandoned")

// runHandler runs h with the task's deadline, heartbeats, lease and panic
// guard, and returns when the handler ended. hard is the parent of the
// handler's context; r is the runner's entry in w.running, where the task
// is cancelable and gets its heartbeats. A task that runs alone (t.alone)
// waits for the others first, and mark is then its record: its start
// alone is written before h is called (attempts.go). Its lease runs from
// leased (start if zero or later). end is when the handler returned.
func (w *Worker) runHandler(hard context.Context, r *runner, log *taskLog, t *Task, h Handler, timeout, ackWait time.Duration, leased, start time.Time, mark *forq.Result) (out []byte, end time.Time, err error) {
	ctx, cancel := context.WithCancelCause(hard)
	defer cancel(nil)
	var timedOut error
	if timeout > 0 {
		timedOut = fmt.Errorf("task timed out after %s", timeout)
	}
	start, entered := w.hold(ctx, r, t, cancel, timeout, ackWait, timedOut, leased, start)
	defer func() {
		var lost, abandoned bool
		end, lost, abandoned = w.unhold(r, t, entered == nil)
		if abandoned {
			out, err = nil, errAbandonedRun
		} else if lost {
			out, err = nil, ErrLeaseLost
		}
	}()
	if entered != nil {
		return nil, time.Time{}, entered
	}
	if mark != nil {
		mark.StartedAt = start.UTC()
		if !w.startAlone(log, t, mark) {
			return nil, time.Time{}, errUnmarked
		}
	}
	defer func() {
		if p := recover(); p != nil {
			err = panicked(log, p)
		}
	}()
	if timeout > 0 {
		dl := newDeadline(ctx, cancel, timeout, timedOut)
		defer dl.stop()
		w.mu.Lock()
		t.dl = dl
		w.mu.Unlock()
		ctx = dl
	}
	out, err = h.Handle(ctx, t)
	if err != nil && ctx.Err() != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errStopping) || errors.Is(cause, forq.ErrCanceled) || errors.Is(cause, ErrLeaseLost) {
			return nil, time.Time{}, cause
		} else if cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	return out, time.Time{}, err
}

// hold makes t runner r's task before its handler runs: cancelable
// (cancel, at once if the worker is stopping or the task was canceled),
// given heartbeats and a lease of ackWait from leased (start if zero or
// later: its first heartbeat is then due a beat after it), and abandoned past
// its timeout and the abandon grace. Then it takes t through the gate of
// runs alone (enter), and returns when t starts (later than start if it
// waited there), or the gate's error.
func (w *Worker) hold(ctx context.Context, r *runner, t *Task, cancel context.CancelCauseFunc, timeout, ackWait time.Duration, timedOut error, leased, start time.Time) (time.Time, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r.id, r.cancel, r.msg, r.t = t.ID, cancel, t.msg, t
	t.rn = r
	r.gen++
	if leased.IsZero() || leased.After(start) {
		leased = start
	}
	r.beat, r.next, r.ackWait, r.lastOK, r.lost = 0, time.Time{}, ackWait, leased, false
	r.started, r.abandonAt, r.timedOut = start, time.Time{}, timedOut
	if ackWait > 0 {
		r.beat = beatOf(ackWait)
		r.next = leased.Add(r.beat)
	}
	if w.stopping != nil {
		cancel(w.stopping)
	} else if _, ok := w.canceled[t.ID]; ok {
		cancel(forq.ErrCanceled)
	}
	waited, err := w.enter(ctx, t)
	if err == nil && waited {
		// Waited for a run alone, or for the others: it starts now.
		start = time.Now()
		r.started = start
	}
	if timeout > 0 {
		r.abandonAt = start.Add(timeout + w.abandonGrace)
	}
	return start, err
}

// unhold ends runner r's hold on t (hold) when its handler has returned,
// t having passed the gate if entered. It returns when the handler ended
// and whether its lease was lost meanwhile; or, if the handler was
// abandoned (its task settled by the abandonment), it waits for the
// settlement to be done with the task (before the delivery's deferred
// work: its lock) and reports abandoned.
func (w *Worker) unhold(r *runner, t *Task, entered bool) (end time.Time, lost, abandoned bool) {
	w.mu.Lock()
	gone := r.abandoned
	if gone == nil {
		if entered {
			w.leave(t)
		}
		end = time.Now()
		if r.lost || (r.ackWait > 0 && end.Sub(r.lastOK) > r.ackWait) {
			if !r.lost {
				w.loseLease(r)
			}
			lost = true
		}
	}
	r.id, r.cancel, r.msg, r.t = "", nil, nil, nil
	w.mu.Unlock()
	if gone != nil {
		<-gone
		return time.Time{}, false, true
	}
	return end, lost, false
}

// leaseExpired reports whether the delivery's lease ran out by now before
// its handler started: it waited longer than the ack wait since it was
// received (or last renewed) without a heartbeat, so the broker may have
// given it to another worker already (lease.go).
func (d *delivery) leaseExpired(now time.Time) bool {
	return d.ackWait > 0 && !d.leased.IsZero() && now.Sub(d.leased) > d.ackWait
}
