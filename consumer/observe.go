package consumer

import (
	"context"
	"encoding/json"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
)

// Outcome is how one delivery of a task ended on a worker.
type Outcome string

// The outcomes an Observer is told about.
const (
	// OutcomeSucceeded: the handler returned nil; the task is done.
	OutcomeSucceeded Outcome = "succeeded"
	// OutcomeRetried: the attempt failed and the task will run again.
	OutcomeRetried Outcome = "retried"
	// OutcomeDead: the task failed for the last time (or permanently) and
	// was dead-lettered.
	OutcomeDead Outcome = "dead"
	// OutcomeCanceled: the task was canceled, before or while running.
	OutcomeCanceled Outcome = "canceled"
	// OutcomeInterrupted: the worker stopped before the task finished; it
	// is redelivered at once. Also a task handed back before it ran (its
	// record could not be read or written), and one whose lease was lost
	// (ErrLeaseLost), which the broker redelivers.
	OutcomeInterrupted Outcome = "interrupted"
)

// Observer is told how every task delivery ends, e.g. to count them in
// metrics. It is called from the goroutines that run tasks, so it must be
// safe for concurrent use and quick.
type Observer interface {
	// TaskDone reports one delivery of a task of queue and taskType that
	// ended with outcome after running for d (0 if it did not run).
	TaskDone(queue, taskType string, outcome Outcome, d time.Duration)
}

// StartObserver is an Observer that is also told when a task's handler
// starts, e.g. to measure how long tasks wait in their queue. A
// Config.Observer that implements it is told.
type StartObserver interface {
	Observer
	// TaskStarted reports that the handler of a task of queue and taskType
	// starts on the task's first delivery, wait after the broker stored
	// the task's message (when it was enqueued; for a delayed task, when
	// it came due). Redeliveries are not reported: their wait includes
	// the earlier attempts and back-offs.
	TaskStarted(queue, taskType string, wait time.Duration)
}

// observeStart tells a StartObserver that t's handler starts now, on t's
// first delivery.
func (w *Worker) observeStart(t *Task, now time.Time) {
	so, ok := w.cfg.Observer.(StartObserver)
	if !ok || t.msg == nil {
		return
	}
	a, ok := wire.ParseAck(t.msg.Reply())
	if !ok || a.Delivered != 1 || a.Timestamp == 0 || a.Timestamp > math.MaxInt64 {
		return
	}
	so.TaskStarted(t.Queue, t.Type, max(now.Sub(time.Unix(0, int64(a.Timestamp))), 0))
}

// InFlight returns how many tasks this worker is processing now.
func (w *Worker) InFlight() int64 { return w.inflight.Load() }

// observe counts outcome o of task t, whose delivery ended at end, and
// tells the Observer.
func (w *Worker) observe(t *Task, o Outcome, res *forq.Result, end time.Time) {
	var d time.Duration
	if !res.StartedAt.IsZero() && !res.FinishedAt.IsZero() {
		d = res.FinishedAt.Sub(res.StartedAt)
	}
	if o == OutcomeSucceeded {
		w.succeeded.Add(1)
	}
	w.window.add(t.Queue, o, end)
	if w.cfg.Observer != nil {
		w.cfg.Observer.TaskDone(t.Queue, t.Type, o, d)
	}
}

// window counts a worker's outcomes per queue over the last minute, in
// one-second buckets.
type window struct {
	mu     sync.Mutex
	queues map[string]*[60]bucket
}

type bucket struct {
	sec               int64
	processed, failed int64
}

func newWindow() *window { return &window{queues: map[string]*[60]bucket{}} }

// add counts outcome o of a task of queue that ended at end (the
// caller's clock reading, rather than one more time.Now per task).
func (win *window) add(queue string, o Outcome, end time.Time) {
	now := end.Unix()
	win.mu.Lock()
	defer win.mu.Unlock()
	bs := win.queues[queue]
	if bs == nil {
		bs = new([60]bucket)
		win.queues[queue] = bs
	}
	b := &bs[now%60]
	if b.sec != now {
		*b = bucket{sec: now}
	}
	switch o {
	case OutcomeSucceeded:
		b.processed++
	case OutcomeRetried, OutcomeDead:
		b.failed++
	}
}

// lastMinute sums the buckets of the last 60 seconds.
func (win *window) lastMinute() map[string]forq.MinuteCounts {
	now := time.Now().Unix()
	win.mu.Lock()
	defer win.mu.Unlock()
	out := make(map[string]forq.MinuteCounts, len(win.queues))
	for q, bs := range win.queues {
		var c forq.MinuteCounts
		for _, b := range bs {
			if now-b.sec < 60 {
				c.Processed += b.processed
				c.Failed += b.failed
			}
		}
		out[q] = c
	}
	return out
}

// Status returns this worker's status as it is published in
// forq.BucketWorkers.
func (w *Worker) Status() forq.WorkerStatus {
	lm := w.window.lastMinute()
	for _, q := range w.cfg.Queues {
		if _, ok := lm[q]; !ok {
			lm[q] = forq.MinuteCounts{}
		}
	}
	running, byQueue := w.runningTasks()
	return forq.WorkerStatus{
		PID: w.pid, Host: w.name, Queues: w.cfg.Queues, Types: w.Types(),
		Concurrency: w.cfg.Concurrency, InFlight: w.inflight.Load(), Processed: w.processed.Load(),
		Succeeded: w.succeeded.Load(), Started: w.started, Updated: time.Now().UTC(), LastMinute: lm,
		RunningByQueue: byQueue, Running: running, Restarts: w.cfg.Restarts,
	}
}

// runningTasks lists the tasks whose handlers run now (see hold), the
// longest running first, at most forq.MaxStatusTasks of them, and counts
// them all per queue.
func (w *Worker) runningTasks() ([]forq.RunningTask, map[string]int) {
	w.mu.Lock()
	out := make([]forq.RunningTask, 0, len(w.running))
	for r := range w.running {
		if t := r.t; t != nil && r.abandoned == nil {
			out = append(out, forq.RunningTask{ID: t.ID, Queue: t.Queue, Type: t.Type, Seq: t.seq(), Attempt: t.Attempt, Started: r.started.UTC()})
		}
	}
	w.mu.Unlock()
	byQueue := make(map[string]int, len(w.cfg.Queues))
	for _, rt := range out {
		byQueue[rt.Queue]++
	}
	slices.SortFunc(out, func(a, b forq.RunningTask) int { return a.Started.Compare(b.Started) })
	return out[:min(len(out), forq.MaxStatusTasks)], byQueue
}

// publishStatus writes the worker's status to forq.BucketWorkers every
// Config.StatusInterval until ctx ends, then deletes it.
func (w *Worker) publishStatus(ctx context.Context) {
	key := forq.WorkerKey(w.host, w.pid)
	// Each round is bounded, and ends at once when ctx does: with the
	// broker gone, a stop (or an abort, its supervisor dead) must not wait
	// on it.
	put := func() {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		w.loadQueueRecord(pctx)
		b, _ := json.Marshal(w.Status())
		if _, err := w.h.Workers.Put(pctx, key, b); err != nil {
			w.log.Debug("publishing the worker status failed", "err", err)
		}
	}
	put()
	t := time.NewTicker(w.cfg.StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			put()
		case <-ctx.Done():
			// Disconnected, the delete could only wait out its timeout;
			// the entry then expires with the bucket's TTL.
			if w.nc.IsConnected() {
				dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_ = w.h.Workers.Delete(dctx, key)
			}
			return
		}
	}
}

// recordsQueue reports whether queue's consumer asks for every task to be
// recorded (forq.MetadataRecord), as last read by loadQueueRecord.
func (w *Worker) recordsQueue(queue string) bool {
	m := w.queueRecord.Load()
	return m != nil && (*m)[queue]
}

// loadQueueRecord reads forq.MetadataRecord from the consumers of the
// worker's queues.
func (w *Worker) loadQueueRecord(ctx context.Context) {
	m := make(map[string]bool, len(w.cfg.Queues))
	for _, q := range w.cfg.Queues {
		c, err := w.js.Consumer(ctx, forq.StreamTasks, wire.ConsumerName(q))
		if err != nil {
			if old := w.queueRecord.Load(); old != nil {
				m[q] = (*old)[q] // keep what was known
			}
			continue
		}
		m[q] = c.CachedInfo().Config.Metadata[forq.MetadataRecord] == "1"
	}
	w.queueRecord.Store(&m)
}
