package producer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/kvcas"
	"github.com/forqhq/forq/internal/record"
	"github.com/nats-io/nats.go/jetstream"
)

// Cancel cancels task id wherever it is: a queued task never starts, and a
// running one has its context canceled in whichever process and host runs
// it (an exec task's process group is terminated). Its state becomes
// canceled and it is not retried. The error wraps forq.ErrFinished when the
// task has already finished; canceling an unknown ID records the request
// all the same, so that a task enqueued later with that ID is dropped.
func (p *Producer) Cancel(ctx context.Context, id string) error {
	if id == "" {
		return fmt.Errorf("cancel: %w: empty task ID", forq.ErrInvalidTask)
	}
	records := record.New(p.results)
	cur, rev, err := records.Get(ctx, id)
	if errors.Is(err, record.ErrMalformed) {
		return err
	}
	if err != nil {
		return fmt.Errorf("cancel %s: %w", id, err)
	}
	if cur != nil {
		record.View(cur, time.Now())
		if cur.State.Final() {
			return fmt.Errorf("cancel %s: %w: it is %s", id, forq.ErrFinished, cur.State)
		}
	}
	// A delayed task's schedule goes first, so that it never fires; the
	// cancel request covers one that has just fired.
	if err := p.unschedule(ctx, id); err != nil {
		return fmt.Errorf("cancel %s: remove its schedule: %w", id, err)
	}
	if _, err := p.cancels.PutString(ctx, id, time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
		return fmt.Errorf("cancel %s: %w", id, err)
	}
	// A queued task shows as canceled at once; a running one is marked
	// again by its worker when its handler has returned (record.Cancel
	// does not start from running), as is one whose record changed
	// meanwhile.
	next := forq.Result{ID: id}
	if cur != nil {
		next = *cur
	}
	next.State, next.Error = forq.StateCanceled, forq.ErrCanceled.Error()
	err = records.Set(ctx, record.Cancel, id, cur, rev, &next)
	if err != nil && !errors.Is(err, record.ErrNotAllowed) && !kvcas.IsConflict(err) {
		return fmt.Errorf("cancel %s: record: %w", id, err)
	}
	return nil
}

// WaitMany waits until every task of ids has reached a final state and
// returns their results in the order of ids, like multiprocessing's
// Pool.map. It uses one KV watch, not polling (see watchKeys), and watches
// again when the connection to the broker drops (see Wait). A task must
// have been enqueued WithRecord: when some were enqueued by this producer
// without one and have no final record, WaitMany returns at once with an
// error wrapping forq.ErrNotRecorded that says how many, and the final
// results recorded so far. Bound the wait with ctx.
func (p *Producer) WaitMany(ctx context.Context, ids []string) ([]*forq.Result, error) {
	out := make([]*forq.Result, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	index := make(map[string][]int, len(ids))
	for i, id := range ids {
		index[id] = append(index[id], i)
	}
	left := len(index)
	for {
		pending := make([]string, 0, left)
		for id, is := range index {
			if out[is[0]] == nil {
				pending = append(pending, id)
			}
		}
		drop := p.conn.dropCh()
		// One watch per watchChunk keys: see watchKeys.
		w, err := watchKeys(ctx, p.nc, p.results, pending, &p.noBatchGet)
		if err != nil {
			if p.watchAgain(ctx, err) {
				continue
			}
			return nil, fmt.Errorf("wait: %w", err)
		}
		again := false
		for left > 0 && !again {
			select {
			case <-ctx.Done():
				w.stop()
				return out, fmt.Errorf("wait: %d of %d tasks not finished: %w", left, len(index), ctx.Err())
			case <-drop:
				// Watch again once the connection is back (see Wait).
				again = true
			case err := <-w.failed:
				if !p.watchAgain(ctx, err) {
					w.stop()
					return out, fmt.Errorf("wait: %w", err)
				}
				again = true
			case e, ok := <-w.updates:
				if !ok {
					w.stop()
					return out, fmt.Errorf("wait: %w", errWatchClosed)
				}
				if e == nil {
					// The current values are in: a task enqueued here
					// without a record that has no final one will not
					// get one.
					if never := p.neverRecorded(ctx, unfinished(ids, out)); len(never) > 0 {
						w.stop()
						return out, notRecorded(never, len(index))
					}
					continue
				}
				done, err := finalOf(e, index, out)
				if err != nil {
					w.stop()
					return out, err
				}
				if done {
					left--
				}
			}
		}
		w.stop()
		if left == 0 {
			break
		}
	}
	return out, nil
}

// finalOf reads update e of WaitMany's watch: when it is the final record
// of a task waited for (index: each ID's places in out) that has none in
// out yet, it puts it there and reports true. Updates of other keys, and
// records not final, are skipped: a running or failed one without a
// decode (record.Running).
func finalOf(e jetstream.KeyValueEntry, index map[string][]int, out []*forq.Result) (bool, error) {
	if e.Operation() != jetstream.KeyValuePut {
		return false, nil
	}
	is, ok := index[e.Key()]
	if !ok || out[is[0]] != nil || record.Running(e.Value()) {
		return false, nil
	}
	r, err := record.Read(e.Key(), e.Value())
	if err != nil {
		return false, err
	}
	if !r.State.Final() {
		return false, nil
	}
	for _, i := range is {
		out[i] = r
	}
	return true, nil
}

// unfinished returns the IDs of ids without a result in out, each once.
func unfinished(ids []string, out []*forq.Result) []string {
	var u []string
	seen := map[string]bool{}
	for i, id := range ids {
		if out[i] == nil && !seen[id] {
			seen[id] = true
			u = append(u, id)
		}
	}
	return u
}
