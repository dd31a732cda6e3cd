package producer_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
)

// runWorker runs a worker of queue whose "ok" tasks succeed and "fail"
// tasks fail, until the test ends.
func runWorker(t *testing.T, url, queue string) {
	t.Helper()
	nc := testutil.Connect(t, url)
	w, err := consumer.New(t.Context(), nc, consumer.Config{Queues: []string{queue}, Concurrency: 4, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	w.HandleFunc("ok", func(context.Context, *consumer.Task) ([]byte, error) { return []byte("ok"), nil })
	w.HandleFunc("fail", func(context.Context, *consumer.Task) ([]byte, error) { return nil, errors.New("boom") })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// Waiting for tasks this producer enqueued without a record returns
// forq.ErrNotRecorded at once, not at the waiter's deadline; a task of
// them that died is returned with its record; tasks of a queue that
// records every task, and tasks another producer enqueued, are waited for.
func TestWaitForUnrecordedTasks(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	runWorker(t, s.ClientURL(), "q")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	tasks := make([]forq.Task, 10)
	for i := range tasks {
		tasks[i] = forq.Task{Type: "ok", Queue: "q", Record: i%2 == 0}
	}
	infos, err := p.EnqueueMany(ctx, tasks)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(infos))
	for i, in := range infos {
		ids[i] = in.ID
	}
	begin := time.Now()
	rs, err := p.WaitMany(ctx, ids)
	if !errors.Is(err, forq.ErrNotRecorded) || !strings.Contains(err.Error(), "5 of 10 tasks") {
		t.Errorf("WaitMany: got %v, want forq.ErrNotRecorded for 5 of 10 tasks", err)
	}
	if took := time.Since(begin); took > 5*time.Second {
		t.Errorf("WaitMany took %s, want an answer at once", took)
	}
	if len(rs) != len(ids) {
		t.Fatalf("WaitMany gave %d results, want %d slots", len(rs), len(ids))
	}
	for i, r := range rs {
		if i%2 == 1 && r != nil {
			t.Errorf("task %d (no record): result %+v, want none", i, r)
		}
	}
	begin = time.Now()
	if _, err := p.Wait(ctx, ids[1]); !errors.Is(err, forq.ErrNotRecorded) || time.Since(begin) > 5*time.Second {
		t.Errorf("Wait of a task without a record: got %v after %s, want forq.ErrNotRecorded at once", err, time.Since(begin))
	}
	// The recorded half is waited for as before.
	rec := []string{ids[0], ids[2], ids[4], ids[6], ids[8]}
	if rs, err := p.WaitMany(ctx, rec); err != nil || rs[4].State != forq.StateSucceeded {
		t.Fatalf("WaitMany of the recorded tasks: %v, %v", rs, err)
	}

	waitDeadAndRecordAll(t, ctx, p, s.ClientURL())

	// Another producer's task: this one cannot tell, and waits.
	p2, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := p2.Enqueue(ctx, forq.Task{Type: "ok", Queue: "q"})
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if _, err := p.Wait(short, other.ID); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait of another producer's task: got %v, want the context's deadline", err)
	}
}

// waitDeadAndRecordAll checks the waits for tasks p enqueued without a
// record that are recorded all the same: one that died, and one of a
// queue that records every task.
func waitDeadAndRecordAll(t *testing.T, ctx context.Context, p *producer.Producer, url string) {
	t.Helper()
	// A task without a record that died has its record, and Wait gives it.
	dead, err := p.Enqueue(ctx, forq.Task{Type: "fail", Queue: "q", MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		r, err := p.Result(ctx, dead.ID)
		return err == nil && r.State == forq.StateDead
	}, "the failing task was never recorded dead")
	if r, err := p.Wait(ctx, dead.ID); err != nil || r.State != forq.StateDead {
		t.Errorf("Wait of a dead task without a record: %+v, %v; want its dead record", r, err)
	}

	// A queue that records every task: waited for.
	in, err := admin.New(ctx, testutil.Connect(t, url), admin.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.SetRecordAll(ctx, "all", true); err != nil {
		t.Fatal(err)
	}
	info, err := p.Enqueue(ctx, forq.Task{Type: "ok", Queue: "all"})
	if err != nil {
		t.Fatal(err)
	}
	runWorker(t, url, "all")
	if r, err := p.Wait(ctx, info.ID); err != nil || r.State != forq.StateSucceeded {
		t.Errorf("Wait on a queue that records every task: %+v, %v; want succeeded", r, err)
	}

}
