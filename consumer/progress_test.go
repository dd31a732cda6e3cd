package consumer_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/producer"
)

// Task.InProgress moves the handler's deadline (and the time it would be
// abandoned) to a whole timeout from now: a handler that reports progress
// runs past its timeout, one that stops reporting times out a timeout
// after its last report; after that, InProgress returns the timeout.
func TestInProgressExtendsTheDeadline(t *testing.T) {
	b := setup(t)
	const timeout = time.Second
	w := newWorker(t, b, consumer.Config{Queues: []string{"prog"}, Concurrency: 2, AckWait: 2 * time.Second,
		AbandonGrace: 200 * time.Millisecond})
	var moved atomic.Bool
	w.HandleFunc("progress", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		first, _ := ctx.Deadline()
		end := time.Now().Add(2*timeout + timeout/2)
		for time.Now().Before(end) {
			select {
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			case <-time.After(timeout / 4):
			}
			if err := task.InProgress(); err != nil {
				return nil, err
			}
		}
		last, _ := ctx.Deadline()
		moved.Store(last.Sub(first) > timeout)
		return []byte("done"), nil
	})
	var quiet atomic.Int64 // how long after its last report the handler's context ended
	var late atomic.Value
	w.HandleFunc("stall", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		for range 3 {
			time.Sleep(timeout / 2)
			if err := task.InProgress(); err != nil {
				return nil, err
			}
		}
		last := time.Now()
		<-ctx.Done()
		quiet.Store(int64(time.Since(last)))
		late.Store(errOrNone(task.InProgress()))
		return nil, context.Cause(ctx)
	})
	stop := start(t, w)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var ids []string
	for _, typ := range []string{"progress", "stall"} {
		info, err := b.p.Enqueue(ctx, forq.Task{Type: typ, Timeout: timeout, MaxAttempts: 1}, producer.WithQueue("prog"), producer.WithRecord())
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
	}
	rs, err := b.p.WaitMany(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if r := rs[0]; r.State != forq.StateSucceeded || string(r.Result) != "done" {
		t.Errorf("reporting progress for 2.5 timeouts: %s %q, want succeeded", r.State, r.Error)
	}
	if !moved.Load() {
		t.Errorf("the handler's ctx.Deadline did not move")
	}
	if r := rs[1]; r.State != forq.StateDead || !strings.Contains(r.Error, "task timed out after 1s") {
		t.Errorf("stalled after 1.5 timeouts of progress: %s %q, want dead, timed out", r.State, r.Error)
	}
	if q := time.Duration(quiet.Load()); q < timeout*8/10 || q > 3*timeout {
		t.Errorf("stalled handler's context ended %s after its last report, want about %s", q, timeout)
	}
	if e, _ := late.Load().(string); !strings.Contains(e, "task timed out") {
		t.Errorf("InProgress after the timeout: %q, want the timeout", e)
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v, want nil (no handler abandoned)", err)
	}
	if err := (&consumer.Task{}).InProgress(); err == nil {
		t.Errorf("InProgress of a task that was not delivered: nil error")
	}
}

func errOrNone(err error) string {
	if err == nil {
		return "none"
	}
	return err.Error()
}
