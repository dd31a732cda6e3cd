package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/record"
)

// Attempts count a task's failures, not its deliveries.
//
// A failure is an error, a panic or a timeout of its handler, or the crash
// of a worker process that was running this task alone. A delivery lost
// otherwise does not count: a hand-back at shutdown, the death of the
// worker's supervisor, or the crash of a process caused by another task
// running beside it. Failures are written to the task's record in
// forq.BucketResults (fail always writes one), with the stream sequence of
// the message they are for and the run (delivery) that wrote them.
//
// A task's first delivery reads nothing: it is attempt 1. A redelivery
// (the rare path, see redelivered) reads the record:
//
//   - its Failures give the attempt number: Failures+1;
//   - if the last run it knows of is not the one just before this one, or
//     that run never wrote an outcome (its record still says "running"),
//     a delivery was lost: its process died (or was killed, or stopped
//     without writing), with this task perhaps beside others. The task is
//     a suspect, and runs alone: its worker waits until no other handler
//     runs, admits none beside it, and writes to the record that run n
//     started alone (Result.Alone) before calling the handler; its
//     outcome, whatever it is (success, failure, hand-back at shutdown),
//     is written before the task is acked or naked;
//   - if the record says a run started alone and has no outcome, that
//     run's process died while running only this task: a crash of the
//     task, counted as a failure ("its worker process died while running
//     it alone"). The task runs alone again, at once, or is dead-lettered
//     if that was its last attempt.
//
// So several tasks in one process are told apart by running the suspects
// one at a time: a crash among several tasks costs none of them an
// attempt; a task that crashes its process again when alone is charged,
// and one that keeps doing so is dead-lettered after its attempts. Its
// dead letter takes one more delivery than its attempts (the first crash,
// among others, is not counted), and a worker with Concurrency 1 runs
// every task alone. What cannot be told apart: a process killed from
// outside (SIGKILL, the OOM killer) while it ran a suspect alone is
// counted as that task's crash.
//
// A worker alive but starved of CPU (or frozen, then resumed) past a
// task's ack wait loses its lease (lease.go) and the broker redelivers
// the task; that costs it no attempt:
//
//   - a delivery whose lease ran out before its handler started (it
//     waited for a runner) is not run there (oStale);
//   - a run whose lease ran out, and a delivery that was not run for
//     that, write to the record that their run ended (markEnded), unless
//     a later run wrote there first: its next delivery is then neither a
//     suspect nor, if that run was alone, charged a crash;
//   - a redelivery that finds the start of a run alone without an end
//     written by its own worker since that worker started (the broker
//     redelivered to the same process, as with one worker per queue)
//     does not count a crash: that process is alive (ranAloneHere).
//
// What is left: a run alone whose worker is frozen past its ack wait and
// whose redelivery reads the record on another worker before the frozen
// one resumes and writes its end is counted as a crash, as a frozen
// process cannot be told from a dead one.
//
// The first delivery of a task pays nothing for this: no read, no write
// (a record is written only if the task asked for one, as before), and
// the gate that keeps others out of a run alone is two comparisons under
// the lock a handler's start takes anyway.

// errUnmarked ends a run that was to start alone but whose start could
// not be written to its record: it is handed back, not counted.
var errUnmarked = errors.New("could not record the start of a run alone")

// redelivered starts every delivery of a task but its first (t.run() > 1):
// it reads the task's record and sets t.Attempt (its failures + 1) and
// t.alone (a delivery of it was lost: it runs alone). It returns oRun, or
// the outcome that ends the delivery without running: the task used up
// its attempts (oFailed, to be dead-lettered), its record could not be
// read (oUnreadable), it ended on an earlier run (oEnded), or it must run
// alone on a worker that cannot run it so (oSuspect).
//
// Further checks of a redelivered task belong here, before it runs.
func (w *Worker) redelivered(d *delivery) outcome {
	t := d.t
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var rec forq.Result
	cur, rev, err := record.New(w.h.Results).Get(ctx, t.ID)
	if err != nil && !errors.Is(err, record.ErrMalformed) {
		d.err = err
		return oUnreadable
	}
	if cur != nil {
		rec = *cur
	}
	if rev != 0 {
		t.rev = rev // record.go's compare-and-set starts from it
	}
	run, seq := t.run(), t.seq()
	if rec.State.Final() && (rec.Seq == seq || rec.Seq == 0) {
		// An earlier run of this message ended it, and its ack was lost
		// (a broker restart, a worker killed between the two): settle
		// this delivery, do not run it again or touch its record.
		d.seen = rec.State
		return oEnded
	}
	if rec.Seq != seq || rec.Run >= run {
		// No worker's record of this message: a record of an earlier
		// message of the same ID (retried from the dead letters), one the
		// producer wrote, or none.
		rec = forq.Result{}
	}
	t.history = rec.History
	failures := rec.Failures
	settled := rec.Run == run-1 && rec.State != forq.StateRunning && !rec.Alone
	var crash error
	if rec.Alone && !w.ranAloneHere(&rec) {
		failures++
		crash = fmt.Errorf("its worker process died while running it alone (run %d)", rec.Run)
	}
	switch {
	case crash != nil && failures >= t.MaxAttempts:
		t.Attempt, d.err = failures, crash
		return oFailed
	case failures >= t.MaxAttempts:
		// Its last failure was counted, but the dead letter was not
		// written: write it now, without running it again.
		msg := rec.Error
		if msg == "" {
			msg = "used up its attempts"
		}
		t.Attempt, d.err = failures, errors.New(msg)
		return oFailed
	case crash != nil:
		t.Attempt = failures + 1
		d.log.get().Warn("task crashed its worker process while running alone; running it alone again", "failures", failures, "run", rec.Run)
	default:
		t.Attempt = failures + 1
	}
	t.alone = !settled
	if t.alone && w.holdsAbandoned() {
		// An abandoned handler may still do anything in this process: a
		// run alone here would be charged for it. Let another worker
		// take it; this one is about to be replaced.
		return oSuspect
	}
	return oRun
}

// ranAloneHere reports whether rec's run alone was this worker's, since
// it started: then its process did not die, whatever became of that run
// (its lease ran out here while it ran, say). A process restarted with the
// same PID and name started after the run it would be taken for.
func (w *Worker) ranAloneHere(rec *forq.Result) bool {
	return rec.WorkerPID == w.pid && rec.Host == w.name && !w.started.IsZero() && !rec.StartedAt.Before(w.started)
}

// enter is the gate a handler passes before it runs: a task that runs
// alone waits until no other handler runs and keeps others out while it
// runs; others wait while one runs alone or waits to. w.mu is held; the
// common case (no one alone) returns at once. It reports whether it
// waited, and returns ctx's cause if ctx ends first.
func (w *Worker) enter(ctx context.Context, t *Task) (waited bool, err error) {
	if !t.alone && w.aloneWait == 0 && !w.aloneRun {
		w.shared++
		return false, nil
	}
	waiting := false
	for {
		if t.alone {
			if w.shared == 0 && !w.aloneRun {
				if waiting {
					w.aloneWait--
				}
				w.aloneRun = true
				return waited, nil
			}
			if !waiting {
				waiting = true
				w.aloneWait++
			}
		} else if w.aloneWait == 0 && !w.aloneRun {
			w.shared++
			return waited, nil
		}
		waited = true
		if w.gate == nil {
			w.gate = make(chan struct{})
		}
		ch := w.gate
		w.mu.Unlock()
		select {
		case <-ch:
			w.mu.Lock()
		case <-ctx.Done():
			w.mu.Lock()
			if waiting {
				w.aloneWait--
				w.openGate()
			}
			return true, context.Cause(ctx)
		}
	}
}

// leave is enter's counterpart when a handler ends (or is abandoned).
// w.mu is held.
func (w *Worker) leave(t *Task) {
	if t.alone {
		w.aloneRun = false
		w.openGate()
		return
	}
	w.shared--
	if w.shared == 0 && w.aloneWait > 0 {
		w.openGate()
	}
}

// openGate wakes the handlers waiting in enter to look again. w.mu is held.
func (w *Worker) openGate() {
	if w.gate != nil {
		close(w.gate)
		w.gate = nil
	}
}

// startAlone writes to the task's record that this run has started
// alone, before its handler is called (see the top of this file).
func (w *Worker) startAlone(log *taskLog, t *Task, res *forq.Result) bool {
	res.State = forq.StateRunning
	return w.put(log, w.stamp(t, res, true))
}

// stamp fills in the attempt bookkeeping of a record of t (Attempts,
// Failures, Seq, Run, Alone, History) and returns res. A record of a
// failure adds the attempt to the history.
func (w *Worker) stamp(t *Task, res *forq.Result, alone bool) *forq.Result {
	res.Attempts, res.Seq, res.Run, res.Alone = t.Attempt, t.seq(), t.run(), alone
	res.Failures = t.Attempt - 1
	res.History = t.history
	if res.State == forq.StateFailed || res.State == forq.StateDead {
		res.Failures = t.Attempt
		res.History = addAttempt(t.history, forq.Attempt{Attempt: t.Attempt, Host: res.Host, PID: res.WorkerPID,
			At: res.FinishedAt, Error: res.Error})
	}
	return res
}

// addAttempt returns the history h with a, in a new slice: a replaces the
// last entry if that is of the same attempt (a failure recorded again:
// one whose dead letter could not be written the first time), and only
// the last forq.MaxHistory entries are kept, a's error cut to
// forq.MaxHistoryError bytes.
func addAttempt(h []forq.Attempt, a forq.Attempt) []forq.Attempt {
	a.Error = cutError(a.Error, forq.MaxHistoryError)
	if n := len(h); n > 0 && h[n-1].Attempt == a.Attempt {
		h = h[:n-1]
	}
	h = h[max(0, len(h)-(forq.MaxHistory-1)):]
	out := make([]forq.Attempt, 0, len(h)+1)
	return append(append(out, h...), a)
}

// cutError cuts s to at most n bytes, at a character's boundary, ending
// with "…" when it is cut.
func cutError(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const more = "…"
	i := n - len(more)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + more
}
