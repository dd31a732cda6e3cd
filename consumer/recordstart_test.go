package consumer_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/record"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/producer"
)

// A recorded task has no record while it is queued; the worker that starts
// it makes it, running, then its outcome.
func TestWorkerStartMakesTheRecord(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	info, err := b.p.Enqueue(ctx, forq.Task{Type: "hold"}, producer.WithQueue("rs"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	if r, err := b.p.Result(ctx, info.ID); !errors.Is(err, forq.ErrResultNotFound) {
		t.Fatalf("queued, not started: got %+v, %v; want no record yet", r, err)
	}
	release := make(chan struct{})
	w := newWorker(t, b, consumer.Config{Queues: []string{"rs"}})
	w.HandleFunc("hold", func(ctx context.Context, _ *consumer.Task) ([]byte, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return []byte("done"), nil
	})
	start(t, w)
	var r *forq.Result
	testutil.Eventually(t, 10*time.Second, func() bool {
		r, _ = b.p.Result(ctx, info.ID)
		return r != nil
	}, "no record once a worker took the task")
	if r.State != forq.StateRunning || r.WorkerPID != os.Getpid() || r.Queue != "rs" || r.Type != "hold" {
		t.Errorf("record while it runs: %+v; want running, by this process, of queue rs, type hold", r)
	}
	close(release)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err = b.p.Wait(wctx, info.ID)
	if err != nil || r.State != forq.StateSucceeded || string(r.Result) != "done" {
		t.Errorf("wait: %+v, %v; want succeeded with its result", r, err)
	}
}

// A producer's Cancel of a recorded task that no worker has seen makes its
// record canceled at once, and Wait returns it; the task never runs.
func TestCancelBeforeAnyWorkerSawTheTask(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	info, err := b.p.Enqueue(ctx, forq.Task{Type: "never"}, producer.WithQueue("cq"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.p.Cancel(ctx, info.ID); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := b.p.Wait(wctx, info.ID)
	if err != nil || r.State != forq.StateCanceled || r.Error != forq.ErrCanceled.Error() {
		t.Fatalf("wait after cancel: %+v, %v; want canceled", r, err)
	}
	var mu sync.Mutex
	ran := 0
	w := newWorker(t, b, consumer.Config{Queues: []string{"cq"}})
	w.HandleFunc("never", func(context.Context, *consumer.Task) ([]byte, error) {
		mu.Lock()
		ran++
		mu.Unlock()
		return nil, nil
	})
	start(t, w)
	waitAcked(t, b, "cq")
	mu.Lock()
	defer mu.Unlock()
	if ran != 0 {
		t.Errorf("the canceled task ran %d times", ran)
	}
	if err := b.p.Cancel(ctx, info.ID); !errors.Is(err, forq.ErrFinished) {
		t.Errorf("second cancel: %v, want ErrFinished", err)
	}
}

// The record is the fence, not the cancel requests' watch: a task whose
// record a Cancel made canceled, whose request the worker has not seen
// (here: never made), is dropped by the worker's start, its record kept.
func TestStartFindsTheTaskCanceled(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	h, err := topology.Ensure(ctx, b.js, topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.p.Enqueue(ctx, forq.Task{Type: "never"}, producer.WithQueue("cr"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	canceled := &forq.Result{ID: info.ID, State: forq.StateCanceled, Error: forq.ErrCanceled.Error()}
	if err := record.New(h.Results).Set(ctx, record.Cancel, info.ID, nil, 0, canceled); err != nil {
		t.Fatal(err)
	}
	ran := make(chan struct{}, 1)
	w := newWorker(t, b, consumer.Config{Queues: []string{"cr"}})
	w.HandleFunc("never", func(context.Context, *consumer.Task) ([]byte, error) {
		ran <- struct{}{}
		return nil, nil
	})
	start(t, w)
	waitAcked(t, b, "cr")
	select {
	case <-ran:
		t.Errorf("the task ran over its canceled record")
	default:
	}
	r, err := b.p.Result(ctx, info.ID)
	if err != nil || r.State != forq.StateCanceled || r.WorkerPID != 0 {
		t.Errorf("record: %+v, %v; want the canceled record the cancel made", r, err)
	}
}

// Cancels racing workers' starts: a task whose Cancel made its record
// canceled (read right after Cancel returned: canceled, with no worker in
// it) never has its handler started, and keeps that record; every task
// ends canceled or succeeded.
func TestCancelRacingStartsIsExact(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	const n = 300
	var mu sync.Mutex
	started := map[string]bool{}
	for range 2 {
		w := newWorker(t, b, consumer.Config{Queues: []string{"race"}, Concurrency: 8})
		w.HandleFunc("t", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
			mu.Lock()
			started[task.ID] = true
			mu.Unlock()
			return nil, nil
		})
		start(t, w)
	}
	ids := make([]string, n)
	tasks := make([]forq.Task, n)
	for i := range tasks {
		ids[i] = "race-" + strconv.Itoa(i)
		tasks[i] = forq.Task{ID: ids[i], Type: "t"}
	}
	byCancel := make([]bool, n)
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := b.p.EnqueueMany(ctx, tasks, producer.WithQueue("race"), producer.WithRecord()); err != nil {
			t.Error(err)
		}
	})
	for i, id := range ids {
		wg.Go(func() {
			time.Sleep(time.Duration(i%50) * time.Millisecond)
			err := b.p.Cancel(ctx, id)
			if err != nil && !errors.Is(err, forq.ErrFinished) {
				t.Errorf("cancel %s: %v", id, err)
			}
			r, _ := b.p.Result(ctx, id)
			byCancel[i] = err == nil && r != nil && r.State == forq.StateCanceled && r.WorkerPID == 0
		})
	}
	wg.Wait()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rs, err := b.p.WaitMany(wctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(t, b, "race")
	mu.Lock()
	defer mu.Unlock()
	fenced := 0
	for i, r := range rs {
		if byCancel[i] {
			fenced++
			if started[ids[i]] || r.State != forq.StateCanceled || r.WorkerPID != 0 {
				t.Errorf("%s: its Cancel made the record canceled, yet its handler started: %v, record %s by pid %d", ids[i], started[ids[i]], r.State, r.WorkerPID)
			}
		}
		if r.State != forq.StateCanceled && r.State != forq.StateSucceeded {
			t.Errorf("%s: ended %s, want canceled or succeeded", ids[i], r.State)
		}
	}
	t.Logf("%d of %d tasks fenced by their Cancel's record, %d started", fenced, n, len(started))
}

// A recorded task that succeeds at once costs two writes to the bucket of
// records: its start (running) and its outcome. No queued record is
// written at enqueue.
func TestRecordedTaskCostsTwoWrites(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	if _, err := topology.Ensure(ctx, b.js, topology.Options{}); err != nil {
		t.Fatal(err)
	}
	s, err := b.js.Stream(ctx, "KV_"+forq.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	seq := func() uint64 {
		i, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return i.State.LastSeq
	}
	const n = 20
	tasks := make([]forq.Task, n)
	for i := range tasks {
		tasks[i] = forq.Task{Type: "ok"}
	}
	before := seq()
	infos, err := b.p.EnqueueMany(ctx, tasks, producer.WithQueue("two"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	if got := seq() - before; got != 0 {
		t.Errorf("enqueue wrote %d records, want none", got)
	}
	w := newWorker(t, b, consumer.Config{Queues: []string{"two"}, Concurrency: 4})
	w.HandleFunc("ok", func(context.Context, *consumer.Task) ([]byte, error) { return nil, nil })
	start(t, w)
	ids := make([]string, n)
	for i, in := range infos {
		ids[i] = in.ID
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := b.p.WaitMany(wctx, ids); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, b, "two")
	if got := seq() - before; got != 2*n {
		t.Errorf("%d tasks wrote %d records, want %d", n, got, 2*n)
	}
}
