package consumer

import (
	"context"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/record"
	"github.com/forqhq/forq/internal/wire"
)

// A recorded task's record never moves back from a final state.
//
// Two runs of one task can overlap (a broker restart no worker could fence,
// a worker frozen past its ack wait): the later one must not write
// "running" over the earlier one's "succeeded", or a waiter that already
// saw it... or worse, one that had not yet, would wait for a run that was
// never needed. So a worker writes a recorded task's record with KV
// compare-and-set on the revision it last wrote or read, and writes
// nothing over a final state (succeeded, dead, canceled, expired): the
// first final state stays. Package internal/record owns these rules and
// the table of every change of a record's state.
//
// It costs nothing on the common path: the first delivery's "running" is a
// create-only write (record.Store.Start: most recorded tasks have no record
// until a worker starts them, and a producer's Cancel of one that has none
// creates it "canceled", which this write then finds and keeps), whose
// revision the end of the run then updates. Only a redelivery, a start
// that finds a record, or a write that finds another revision than its
// own, reads the record first. A task without a record asked for is
// recorded only when it fails, as before, with a plain put.

// writeRecord writes res as t's record; see above. t.rev is the revision
// this delivery last wrote or read, 0 when unknown; it is updated.
func (w *Worker) writeRecord(t *Task, res *forq.Result) (record.Outcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	recorded := w.recorded(t)
	if recorded && t.rev == 0 && t.run() == 1 && res.State == forq.StateRunning {
		return record.New(w.h.Results).Start(ctx, res, &t.rev)
	}
	return record.New(w.h.Results).Write(ctx, res, &t.rev, !recorded)
}

// recorded reports whether t's record is kept for its whole life (it was
// enqueued with a record, or its queue records every task).
func (w *Worker) recorded(t *Task) bool {
	return wire.Record(t.Header) || w.recordsQueue(t.Queue)
}

// recordRunning records the delivery's result, in state running, as its
// task's record before its handler runs. It returns oRun, or the outcome
// that ends the delivery instead when the record holds a final state
// already: on a first delivery, the task was canceled before it started
// (a producer's Cancel made its record: record.Store.Start), so it is
// dropped as canceled (oCanceled); on a redelivery, the task ended on
// another run, so this delivery is acked (oEnded) instead of run again.
func (w *Worker) recordRunning(d *delivery) outcome {
	first := d.t.rev == 0 && d.t.run() == 1
	res := w.stamp(d.t, escape(d.res), false)
	out, err := w.writeRecord(d.t, res)
	switch {
	case err != nil:
		d.log.get().Warn("recording the result failed", "state", res.State, "err", err)
		return oRun
	case out != record.Kept:
		return oRun
	case first:
		return d.canceled()
	}
	return oEnded
}
