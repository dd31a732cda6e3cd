package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/forqhq/forq"
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
	cur, err := p.results.Get(ctx, id)
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("cancel %s: %w", id, err)
	}
	r := &forq.Result{ID: id}
	if err == nil {
		if r, err = decode(id, cur.Value()); err != nil {
			return err
		}
		if r.State.Final() {
			return fmt.Errorf("cancel %s: %w: it is %s", id, forq.ErrFinished, r.State)
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
	// again by its worker when its handler has returned.
	if r.State != forq.StateRunning {
		r.State, r.Error = forq.StateCanceled, forq.ErrCanceled.Error()
		b, _ := json.Marshal(r)
		if cur != nil {
			_, err = p.results.Update(ctx, id, b, cur.Revision())
		} else {
			_, err = p.results.Create(ctx, id, b)
		}
		if err != nil && !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return fmt.Errorf("cancel %s: record: %w", id, err)
		}
	}
	return nil
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// WaitMany waits until every task of ids has reached a final state and
// returns their results in the order of ids, like multiprocessing's
// Pool.map. It uses one KV watch for all of them, not polling. A task must
// have been enqueued WithRecord; bound the wait with ctx.
func (p *Producer) WaitMany(ctx context.Context, ids []string) ([]*forq.Result, error) {
	out := make([]*forq.Result, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	index := make(map[string][]int, len(ids))
	for i, id := range ids {
		index[id] = append(index[id], i)
	}
	// WatchFiltered rewrites the slice it is given into subjects.
	w, err := p.results.WatchFiltered(ctx, slices.Clone(ids))
	if err != nil {
		return nil, fmt.Errorf("wait: %w", err)
	}
	defer w.Stop()
	left := len(index)
	for left > 0 {
		select {
		case <-ctx.Done():
			return out, fmt.Errorf("wait: %d of %d tasks not finished: %w", left, len(index), ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return out, errors.New("wait: watch closed")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			is, ok := index[e.Key()]
			if !ok || out[is[0]] != nil {
				continue
			}
			r, err := decode(e.Key(), e.Value())
			if err != nil {
				return out, err
			}
			if !r.State.Final() {
				continue
			}
			for _, i := range is {
				out[i] = r
			}
			left--
		}
	}
	return out, nil
}
