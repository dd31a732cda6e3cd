package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
)

// outcome is how one delivery of a task ends on this worker: a row of
// the outcome table.
type outcome uint8

// The outcomes. oRun is no outcome yet: the task is admitted to run.
const (
	oRun outcome = iota
	// oSucceeded: the handler returned nil.
	oSucceeded
	// oUnrecorded: it succeeded, but its record, which someone waits
	// for, could not be written: it runs again rather than leave a
	// waiter waiting forever.
	oUnrecorded
	// oFailed: an attempt failed (an error, a panic, a timeout, a
	// permanent error, a malformed header, no handler). Not a row: judge
	// turns it into oRetried, oDead or oUndead.
	oFailed
	// oRetried: the attempt failed; the task runs again after a back-off.
	oRetried
	// oDead: it failed for the last time, or permanently: dead-lettered.
	oDead
	// oUndead: it was to be dead-lettered, but the dead letter could not
	// be published: it stays queued, its failure recorded, and is
	// dead-lettered when redelivered (attempts.go).
	oUndead
	// oCanceled: a cancel request came, before or while it ran.
	oCanceled
	// oExpired: nobody started it before its deadline (expire.go).
	oExpired
	// oHandedBack: the worker stopped (or aborted) before the handler
	// finished: redelivered at once, not an attempt.
	oHandedBack
	// oUnmarked: it was to run alone but the start could not be recorded
	// (attempts.go): handed back after a back-off.
	oUnmarked
	// oAbandoned: its handler ignored its canceled context past the end
	// of a stop and was abandoned (lease.go): handed back.
	oAbandoned
	// oLeaseLost: the worker lost the task's lease (lease.go): its other
	// delivery settles it, not this one.
	oLeaseLost
	// oElsewhere: a redelivery of a task whose first run goes on in a
	// live worker (restart.go): offered again after the ack wait.
	oElsewhere
	// oLockBusy and oLockTrouble: its lock is held by another task, or
	// could not be taken (lock.go): offered again after a short wait. Not
	// a task run, nor one toward MaxTasks.
	oLockBusy
	oLockTrouble
	// oUnreadable: a redelivery whose record could not be read to count
	// its attempts: handed back after a back-off.
	oUnreadable
	// oEnded: an earlier run of this message ended it and its ack was
	// lost (record.go): acked, not run again.
	oEnded
	// oSuspect: a redelivery that must run alone (attempts.go), on a
	// worker that abandoned a handler: left to another worker.
	oSuspect
	// oSnoozed: the handler returned Snooze(d) (snooze.go): queued again,
	// its record saying when it is due, offered again after d; not an
	// attempt.
	oSnoozed
	// oStale: its lease ran out before its handler started (it waited
	// for a runner in a starved process, lease.go): not run here, not an
	// attempt; the broker redelivers it.
	oStale
)

// recordWhen says whether an outcome writes the task's record.
type recordWhen uint8

const (
	recordNever  recordWhen = iota
	recordAsked             // if the delivery records (delivery.record)
	recordAlways            // failures always are: attempts.go counts them
)

// ackKind is how an outcome acknowledges the task's message.
type ackKind uint8

const (
	ackNone     ackKind = iota // nothing: the broker redelivers it after the ack wait
	ackAck                     // done: it leaves the stream
	ackNak                     // offered again after delivery.delay (or the row's delay)
	ackRetry                   // offered again after a first retry's back-off
	ackHandBack                // offered again at once, in a way that survives a broker restart
	ackNakNow                  // offered again at once
)

// logAttrs are the details an outcome's log line carries, beside the
// task's own (ID, queue, type, attempt, PID).
type logAttrs uint16

const (
	aLock     logAttrs = 1 << iota // "lock": the lock key
	aErr                           // "err": delivery.err
	aWhy                           // "why": delivery.err
	aRetryIn                       // "retry_in": the nak's delay
	aAttempts                      // "attempts": the task's attempt
	aDeadline                      // "deadline": the task's deadline
	aDuration                      // "duration": how long the handler ran
	aState                         // "state": the state an earlier run recorded, if known
	aRunsOn                        // "delivery" and "runs_on": who runs it
	aFor                           // "for": the nak's delay, of a snooze
)

// row is what settle does for one outcome.
type row struct {
	state  forq.State // the record's state
	record recordWhen
	stamp  bool // the record gets the attempt bookkeeping (stamp)
	// final: the task ended; its unique key is released (ended).
	final bool
	// unrecorded is the outcome instead when the record, which this one
	// must write, could not be.
	unrecorded outcome
	ack        ackKind
	delay      time.Duration // of ackNak, instead of delivery.delay
	ackFailed  string        // logged (warn) when the ack fails; "": ignored
	level      slog.Level
	msg        string // "": nothing logged
	attrs      logAttrs
	observe    Outcome // told to the Observer; "": nothing
	// notRun: not counted as a task in Processed, nor toward MaxTasks.
	notRun bool
	// markEnd: the run ended with its lease, unsettled: its record says
	// so if nothing later was written there (markEnded).
	markEnd bool
}

const nakFailed = "nak failed; the task will be redelivered after the ack wait"

// outcomes is the outcome table: how each outcome settles the delivery.
var outcomes = [...]row{
	oSucceeded: {state: forq.StateSucceeded, record: recordAsked, stamp: true, final: true, unrecorded: oUnrecorded,
		ack: ackAck, ackFailed: "ack failed; the task will be redelivered",
		level: slog.LevelDebug, msg: "task succeeded", attrs: aDuration, observe: OutcomeSucceeded},
	oUnrecorded: {ack: ackNak, delay: time.Second},
	oRetried: {state: forq.StateFailed, record: recordAlways, stamp: true,
		ack: ackNak, ackFailed: nakFailed,
		level: slog.LevelWarn, msg: "task failed; will retry", attrs: aErr | aRetryIn, observe: OutcomeRetried},
	oDead: {state: forq.StateDead, record: recordAlways, stamp: true, final: true,
		ack: ackAck, ackFailed: "ack of dead-lettered task failed",
		level: slog.LevelError, msg: "task dead-lettered", attrs: aErr | aAttempts, observe: OutcomeDead},
	oUndead: {state: forq.StateFailed, record: recordAlways, stamp: true,
		ack:   ackRetry,
		level: slog.LevelError, msg: "dead-letter failed; the task stays queued", attrs: aErr},
	oCanceled: {state: forq.StateCanceled, record: recordAlways, final: true,
		ack: ackAck, ackFailed: "ack of canceled task failed; it will be dropped again when redelivered",
		level: slog.LevelInfo, msg: "task canceled", observe: OutcomeCanceled},
	oExpired: {state: forq.StateExpired, record: recordAlways, final: true,
		ack: ackAck, ackFailed: "ack of expired task failed",
		level: slog.LevelInfo, msg: "task expired before it started", attrs: aDeadline, observe: OutcomeExpired},
	oHandedBack: {state: forq.StateQueued, record: recordAsked, stamp: true,
		ack:   ackHandBack,
		level: slog.LevelInfo, msg: "task interrupted; redelivering", attrs: aWhy, observe: OutcomeInterrupted},
	oUnmarked: {state: forq.StateQueued, record: recordAsked, stamp: true,
		ack:   ackRetry,
		level: slog.LevelInfo, msg: "task interrupted; redelivering", attrs: aWhy, observe: OutcomeInterrupted},
	// Logged when it is abandoned (lease.go).
	oAbandoned: {state: forq.StateQueued, record: recordAsked, stamp: true,
		ack: ackNakNow, observe: OutcomeInterrupted},
	oLeaseLost: {level: slog.LevelWarn, msg: "task lease lost: not acked here; the broker redelivers it",
		attrs: aErr, observe: OutcomeInterrupted, markEnd: true},
	oElsewhere: {ack: ackNak,
		level: slog.LevelInfo, msg: "redelivered task still runs: not starting a second run", attrs: aRunsOn},
	oLockBusy: {ack: ackNak, ackFailed: nakFailed,
		level: slog.LevelDebug, msg: "task's lock is busy; waiting", attrs: aLock | aRetryIn, notRun: true},
	oLockTrouble: {ack: ackNak, ackFailed: nakFailed,
		level: slog.LevelWarn, msg: "could not take the task's lock; retrying", attrs: aLock | aErr | aRetryIn, notRun: true},
	oUnreadable: {ack: ackRetry,
		level: slog.LevelWarn, msg: "reading the task's record failed; handing it back", attrs: aErr | aRetryIn,
		observe: OutcomeInterrupted},
	oEnded: {ack: ackAck, ackFailed: "ack failed; the task will be redelivered",
		level: slog.LevelInfo, msg: "task already ended on another run; not running it again", attrs: aState},
	oSuspect: {ack: ackRetry, observe: OutcomeInterrupted},
	// Recorded whether or not the task asked, so that its next delivery
	// knows this one ended without a failure (attempts.go).
	oSnoozed: {state: forq.StateQueued, record: recordAlways, stamp: true,
		ack: ackNak, ackFailed: "nak of snoozed task failed; it will be redelivered after the ack wait",
		level: slog.LevelDebug, msg: "task snoozed", attrs: aFor, observe: OutcomeSnoozed},
	oStale: {level: slog.LevelInfo, msg: "task's lease ran out before its handler started (this worker was slow to reach it): not run here; the broker redelivers it",
		observe: OutcomeInterrupted, notRun: true, markEnd: true},
}

// settle ends the delivery with outcome o, as its row of the outcome table
// says, in this order: the task's end (its unique key released), its
// record, its acknowledgement, the log line, the Observer.
func (w *Worker) settle(d *delivery, o outcome) {
	if d.res.FinishedAt.IsZero() {
		d.res.FinishedAt = time.Now().UTC()
	}
	end := d.res.FinishedAt // a queued record clears FinishedAt below
	if o == oFailed {
		o = w.judge(d)
	}
	r := &outcomes[o]
	t := d.t
	if r.final {
		w.ended(&d.log, t)
	}
	if r.record == recordAlways || r.record == recordAsked && d.record {
		d.res.State = r.state
		if r.state == forq.StateQueued {
			d.res.StartedAt, d.res.FinishedAt = time.Time{}, time.Time{}
		}
		res := escape(d.res)
		if r.stamp {
			w.stamp(t, res, false)
		} else {
			res.History = t.history
		}
		if !w.put(&d.log, res) && r.unrecorded != oRun {
			r = &outcomes[r.unrecorded]
		}
	}
	if r.markEnd {
		w.markEnded(d)
	}
	w.acknowledge(d, r)
	if r.msg != "" && w.log.Enabled(context.Background(), r.level) {
		w.logOutcome(d, r)
	}
	if r.notRun {
		w.processed.Add(-1)
		w.eng.Unclaim(1)
	}
	if r.observe != "" {
		w.observe(t, r.observe, &d.res, end)
	}
}

// acknowledge sends the row's acknowledgement of the task's message.
func (w *Worker) acknowledge(d *delivery, r *row) {
	m := d.t.msg
	var err error
	switch r.ack {
	case ackNone:
		return
	case ackAck:
		err = m.Ack()
	case ackNak:
		if r.delay > 0 {
			d.delay = r.delay
		}
		err = m.NakWithDelay(d.delay)
	case ackRetry:
		d.delay = w.backoff(1)
		err = m.NakWithDelay(d.delay)
	case ackHandBack:
		err = m.HandBack()
	case ackNakNow:
		err = m.Nak()
	}
	if err != nil && r.ackFailed != "" {
		d.log.get().Warn(r.ackFailed, "err", err)
	}
}

// logOutcome logs the row's line with its details.
func (w *Worker) logOutcome(d *delivery, r *row) {
	args := make([]any, 0, 8)
	if r.attrs&aLock != 0 {
		args = append(args, "lock", d.lockKey)
	}
	if r.attrs&aErr != 0 {
		args = append(args, "err", d.err)
	}
	if r.attrs&aWhy != 0 {
		args = append(args, "why", d.err)
	}
	if r.attrs&aRetryIn != 0 {
		args = append(args, "retry_in", d.delay.Round(time.Millisecond))
	}
	if r.attrs&aAttempts != 0 {
		args = append(args, "attempts", d.t.Attempt)
	}
	if r.attrs&aDeadline != 0 {
		args = append(args, "deadline", d.deadline)
	}
	if r.attrs&aDuration != 0 {
		args = append(args, "duration", d.res.FinishedAt.Sub(d.res.StartedAt))
	}
	if r.attrs&aState != 0 && d.seen != "" {
		args = append(args, "state", d.seen)
	}
	if r.attrs&aRunsOn != 0 {
		args = append(args, "delivery", d.t.run(), "runs_on", d.holder)
	}
	if r.attrs&aFor != 0 {
		args = append(args, "for", d.delay)
	}
	d.log.get().Log(context.Background(), r.level, r.msg, args...)
}

// judge turns a failed attempt (t.Attempt, failing with d.err) into its
// outcome: retried after a back-off, or dead-lettered (oDead, or oUndead
// when the dead letter could not be published). The record counts the
// failure either way (attempts.go).
func (w *Worker) judge(d *delivery) outcome {
	t, err := d.t, d.err
	d.res.Error = err.Error()
	delay := w.backoff(t.Attempt)
	if dl, ok := deadline(t); ok && !errors.Is(err, ErrPermanent) && t.Attempt < t.MaxAttempts && time.Now().Add(delay).After(dl) {
		// The broker drops the task at its deadline: a retry would never come.
		err = fmt.Errorf("%w (not retried: its deadline %s comes before the next attempt)", err, dl.Format(time.RFC3339))
		t.MaxAttempts = t.Attempt
	}
	d.err = err
	if !errors.Is(err, ErrPermanent) && t.Attempt < t.MaxAttempts {
		d.delay = delay
		return oRetried
	}
	if derr := w.deadLetter(t, err); derr != nil {
		// Keep the task: it is redelivered and dead-lettered again later,
		// without running, as its record counts this failure.
		d.err = derr
		return oUndead
	}
	return oDead
}

func (w *Worker) deadLetter(t *Task, cause error) error {
	a, _ := wire.ParseAck(t.msg.Reply())
	m := wire.DeadLetter(wire.Letter{ID: t.ID, Queue: t.Queue, Attempts: t.Attempt, Error: cause.Error()}, a.Seq, t.Header, t.Payload)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := w.js.PublishMsg(ctx, m)
	return err
}

func (w *Worker) backoff(attempt int) time.Duration {
	d := w.cfg.RetryBase
	for i := 1; i < attempt && d < w.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, w.cfg.RetryMax)
	return d/2 + rand.N(d/2+1)
}

// put records res; it reports whether the record holds it now, or a final
// state that it must not replace (see record.go).
func (w *Worker) put(log *taskLog, res *forq.Result) bool {
	if _, err := w.writeRecord(log.t, res); err != nil {
		log.get().Warn("recording the result failed", "state", res.State, "err", err)
		return false
	}
	return true
}
