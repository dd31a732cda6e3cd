package consumer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go/jetstream"
)

// watchCancels loads the cancel requests in forq.BucketCancel, then keeps
// watching it in a goroutine counted by wg until ctx (Run's handler
// context) ends: each new request cancels the task's handler if it runs
// here, and keeps the task from starting if it is delivered later.
func (w *Worker) watchCancels(start, ctx context.Context, wg *sync.WaitGroup) error {
	kw, err := w.h.Cancel.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("watch %s: %w", forq.BucketCancel, err)
	}
	// The initial values end with a nil entry.
	for loaded := false; !loaded; {
		select {
		case e, ok := <-kw.Updates():
			if !ok {
				return fmt.Errorf("watch %s: closed", forq.BucketCancel)
			}
			if e == nil {
				loaded = true
				continue
			}
			w.cancelRequested(e.Key())
		case <-start.Done():
			_ = kw.Stop()
			return start.Err()
		}
	}
	wg.Go(func() {
		defer kw.Stop()
		for {
			select {
			case e, ok := <-kw.Updates():
				if !ok {
					return
				}
				if e != nil && e.Operation() == jetstream.KeyValuePut {
					w.cancelRequested(e.Key())
				}
			case <-ctx.Done():
				return
			}
		}
	})
	return nil
}

// cancelRequested records a cancel request and cancels the task's handler
// if it runs in this process.
func (w *Worker) cancelRequested(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.canceled[id] = struct{}{}
	for r := range w.running {
		if r.id == id {
			r.cancel(forq.ErrCanceled)
		}
	}
}

func (w *Worker) isCanceled(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.canceled[id]
	return ok
}

// dropCanceled ends a canceled task: recorded as canceled, removed from the
// queue, not retried.
func (w *Worker) dropCanceled(log *taskLog, t *Task, res *forq.Result) {
	w.ended(log, t)
	res.State, res.Error = forq.StateCanceled, forq.ErrCanceled.Error()
	if res.FinishedAt.IsZero() {
		res.FinishedAt = time.Now().UTC()
	}
	w.put(log, res)
	if err := t.msg.Ack(); err != nil {
		log.get().Warn("ack of canceled task failed; it will be dropped again when redelivered", "err", err)
	}
	log.get().Info("task canceled")
	w.observe(t, OutcomeCanceled, res)
}
