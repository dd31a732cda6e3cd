package consumer

import (
	"time"

	"github.com/forqhq/forq"
)

// OutcomeExpired: the task reached its deadline before any worker started
// it and was dropped without running.
const OutcomeExpired Outcome = "expired"

// deadline returns the task's deadline, if it has a valid one.
func deadline(t *Task) (time.Time, bool) {
	s := t.Header.Get(forq.HeaderDeadline)
	if s == "" {
		return time.Time{}, false
	}
	dl, err := time.Parse(time.RFC3339Nano, s)
	return dl, err == nil
}

// expire drops a task that nobody started before its deadline: recorded as
// expired, removed from the queue, never run.
func (w *Worker) expire(log *taskLog, t *Task, res *forq.Result, dl time.Time) {
	w.ended(log, t)
	res.State, res.Deadline = forq.StateExpired, dl
	res.Error = "not started before its deadline " + dl.Format(time.RFC3339Nano)
	res.FinishedAt = time.Now().UTC()
	w.put(log, res)
	if err := t.msg.Ack(); err != nil {
		log.get().Warn("ack of expired task failed", "err", err)
	}
	log.get().Info("task expired before it started", "deadline", dl)
	w.observe(t, OutcomeExpired, res)
}
