package consumer_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/lock"
	"github.com/forqhq/forq/producer"
)

// Tasks sharing a lock key never overlap across workers, and waiting for
// the lock uses no attempts: with MaxAttempts 1 every task still runs.
func TestLockedTasksNeverOverlap(t *testing.T) {
	b := setup(t)
	var in, peak, runs atomic.Int32
	var mu sync.Mutex
	attempts := map[int]int{}
	h := func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		n := in.Add(1)
		for old := peak.Load(); n > old && !peak.CompareAndSwap(old, n); old = peak.Load() {
		}
		time.Sleep(5 * time.Millisecond)
		in.Add(-1)
		mu.Lock()
		attempts[task.Attempt]++
		mu.Unlock()
		runs.Add(1)
		return nil, nil
	}
	for range 2 {
		w := newWorker(t, b, consumer.Config{Concurrency: 4})
		w.HandleFunc("locked", h)
		start(t, w)
	}
	const n = 40
	for range n {
		if _, err := b.p.Enqueue(t.Context(), forq.Task{Type: "locked"}, producer.WithLock("k"), producer.WithMaxAttempts(1)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return runs.Load() == n }, "ran %d of %d", runs.Load(), n)
	if peak.Load() != 1 {
		t.Errorf("%d tasks with one lock key ran at once", peak.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if attempts[1] != n {
		t.Errorf("attempt numbers seen: %v, want all 1", attempts)
	}
	if got := len(deadMsgs(t, b, forq.DefaultQueue, 0)); got != 0 {
		t.Errorf("%d tasks dead-lettered", got)
	}
}

// The lock is released however a task ends: error (retried, counted as
// attempts by runs), panic, timeout, cancel; and a Go program holding the
// lock keeps the tasks out.
func TestLockReleasedHoweverTaskEnds(t *testing.T) {
	b := setup(t)
	var seen sync.Map
	w := newWorker(t, b, consumer.Config{Concurrency: 2, RetryBase: 10 * time.Millisecond})
	w.HandleFunc("fail", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		seen.Store(task.ID+"/"+string(rune('0'+task.Attempt)), true)
		return nil, errors.New("boom")
	})
	w.HandleFunc("panic", func(ctx context.Context, task *consumer.Task) ([]byte, error) { panic("oops") })
	w.HandleFunc("hang", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	w.HandleFunc("ok", func(ctx context.Context, task *consumer.Task) ([]byte, error) { return []byte("ok"), nil })
	start(t, w)
	ctx := t.Context()
	enq := func(typ string, opts ...producer.Option) string {
		t.Helper()
		info, err := b.p.Enqueue(ctx, forq.Task{Type: typ}, append(opts, producer.WithLock("k"), producer.WithRecord())...)
		if err != nil {
			t.Fatal(err)
		}
		return info.ID
	}
	wait := func(id string, want forq.State) *forq.Result {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		r, err := b.p.Wait(wctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != want {
			t.Fatalf("task %s: %s (%s), want %s", id, r.State, r.Error, want)
		}
		return r
	}
	id := enq("fail", producer.WithMaxAttempts(3))
	if r := wait(id, forq.StateDead); r.Attempts != 3 {
		t.Errorf("failing task made %d attempts, want 3", r.Attempts)
	}
	for a := 1; a <= 3; a++ {
		if _, ok := seen.Load(id + "/" + string(rune('0'+a))); !ok {
			t.Errorf("attempt %d not seen", a)
		}
	}
	wait(enq("panic", producer.WithMaxAttempts(1)), forq.StateDead)
	wait(enq("hang", producer.WithMaxAttempts(1), producer.WithTimeout(100*time.Millisecond)), forq.StateDead)
	hang := enq("hang")
	testutil.Eventually(t, 10*time.Second, func() bool {
		r, err := b.p.Result(ctx, hang)
		return err == nil && r.State == forq.StateRunning
	}, "hang task not running")
	if err := b.p.Cancel(ctx, hang); err != nil {
		t.Fatal(err)
	}
	wait(hang, forq.StateCanceled)
	start := time.Now()
	wait(enq("ok"), forq.StateSucceeded)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("after the other tasks ended, a task with their lock waited %s", d)
	}

	// A program holding the lock keeps the task out until it unlocks.
	m, err := lock.New(ctx, b.js, "k", lock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	id = enq("ok")
	time.Sleep(500 * time.Millisecond)
	// Not started: no record yet (a worker's start makes it).
	if r, err := b.p.Result(ctx, id); !errors.Is(err, forq.ErrResultNotFound) {
		t.Fatalf("task ran while a program held its lock: %+v, %v", r, err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	wait(id, forq.StateSucceeded)
}

// A unique key holds while its task is queued or running, and is released
// when it ends.
func TestUniqueReleasedWhenTaskEnds(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	release := make(chan struct{})
	first, err := b.p.Enqueue(ctx, forq.Task{Type: "u"}, producer.WithUnique("only-one"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	again, err := b.p.Enqueue(ctx, forq.Task{Type: "u"}, producer.WithUnique("only-one"))
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != first.ID || !again.Duplicate {
		t.Fatalf("second enqueue: %+v, want the first task %s as a duplicate", again, first.ID)
	}
	w := newWorker(t, b, consumer.Config{})
	w.HandleFunc("u", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return nil, nil
	})
	start(t, w)
	testutil.Eventually(t, 10*time.Second, func() bool {
		r, err := b.p.Result(ctx, first.ID)
		return err == nil && r.State == forq.StateRunning
	}, "not running")
	if info, _ := b.p.Enqueue(ctx, forq.Task{Type: "u"}, producer.WithUnique("only-one")); info == nil || info.ID != first.ID {
		t.Fatalf("enqueue while running: %+v", info)
	}
	close(release)
	if _, err := b.p.Wait(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	next, err := b.p.Enqueue(ctx, forq.Task{Type: "u"}, producer.WithUnique("only-one"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	if next.ID == first.ID || next.Duplicate {
		t.Fatalf("enqueue after the task ended: %+v, want a new task", next)
	}
	// A canceled queued task releases its key too.
	if _, err := b.p.Wait(ctx, next.ID); err != nil {
		t.Fatal(err)
	}
	dead, _ := b.p.Enqueue(ctx, forq.Task{Type: "nobody-handles"}, producer.WithUnique("k2"), producer.WithMaxAttempts(1), producer.WithRecord())
	if r, err := b.p.Wait(ctx, dead.ID); err != nil || r.State != forq.StateDead {
		t.Fatalf("%+v %v", r, err)
	}
	if info, _ := b.p.Enqueue(ctx, forq.Task{Type: "u"}, producer.WithUnique("k2")); info == nil || info.Duplicate {
		t.Fatalf("unique key of a dead task still held: %+v", info)
	}
}
