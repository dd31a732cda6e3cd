package consumer

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/forqhq/forq"
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
	// is redelivered at once.
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

// InFlight returns how many tasks this worker is processing now.
func (w *Worker) InFlight() int64 { return w.inflight.Load() }

func (w *Worker) observe(t *Task, o Outcome, res *forq.Result) {
	var d time.Duration
	if !res.StartedAt.IsZero() && !res.FinishedAt.IsZero() {
		d = res.FinishedAt.Sub(res.StartedAt)
	}
	w.window.add(t.Queue, o)
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

func (win *window) add(queue string, o Outcome) {
	now := time.Now().Unix()
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
	b.processed++
	if o == OutcomeRetried || o == OutcomeDead {
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
	return forq.WorkerStatus{
		PID: w.pid, Host: w.host, Queues: w.cfg.Queues, Types: w.Types(),
		Concurrency: w.cfg.Concurrency, InFlight: w.inflight.Load(), Processed: w.processed.Load(),
		Started: w.started, Updated: time.Now().UTC(), LastMinute: lm,
	}
}

// publishStatus writes the worker's status to forq.BucketWorkers every
// Config.StatusInterval until ctx ends, then deletes it.
func (w *Worker) publishStatus(ctx context.Context) {
	key := forq.WorkerKey(w.host, w.pid)
	put := func() {
		w.loadQueueRecord(ctx)
		b, _ := json.Marshal(w.Status())
		pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
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
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = w.h.Workers.Delete(dctx, key)
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
		c, err := w.js.Consumer(ctx, forq.StreamTasks, forq.ConsumerName(q))
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
