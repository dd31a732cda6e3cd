package consumer

import (
	"context"
	"fmt"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go/jetstream"
)

// loadCancels starts watching the cancel requests in forq.BucketCancel
// and loads those made so far, before the worker fetches anything; it
// gives up if ctx ends first. The watch lives until side ends, or its
// caller stops it: followCancels follows it.
func (w *Worker) loadCancels(ctx, side context.Context) (jetstream.KeyWatcher, error) {
	kw, err := w.h.Cancel.WatchAll(side, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", forq.BucketCancel, err)
	}
	// The initial values end with a nil entry.
	for {
		select {
		case e, ok := <-kw.Updates():
			if !ok {
				_ = kw.Stop()
				return nil, fmt.Errorf("watch %s: closed", forq.BucketCancel)
			}
			if e == nil {
				return kw, nil
			}
			w.cancelRequested(e.Key())
		case <-ctx.Done():
			_ = kw.Stop()
			return nil, ctx.Err()
		}
	}
}

// followCancels takes the cancel requests made from now on, until side
// ends: each cancels the task's handler if it runs here, and keeps the
// task from starting if it is delivered later.
func (w *Worker) followCancels(side context.Context, kw jetstream.KeyWatcher) {
	for {
		select {
		case e, ok := <-kw.Updates():
			if !ok {
				return
			}
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				w.cancelRequested(e.Key())
			}
		case <-side.Done():
			return
		}
	}
}

// cancelRequested records a cancel request and cancels the task's handler
// if it runs in this process.
func (w *Worker) cancelRequested(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.canceled[id] = struct{}{}
	w.anyCanceled.Store(true)
	for r := range w.running {
		if r.id == id {
			r.cancel(forq.ErrCanceled)
		}
	}
}

func (w *Worker) isCanceled(id string) bool {
	if !w.anyCanceled.Load() {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.canceled[id]
	return ok
}
