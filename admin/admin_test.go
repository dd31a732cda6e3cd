package admin_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// bundle is a broker with a connection, an Inspector and a Producer on it.
type bundle struct {
	nc *nats.Conn
	js jetstream.JetStream
	in *admin.Inspector
}

func setup(t *testing.T) *bundle {
	t.Helper()
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	in, err := admin.New(t.Context(), nc, admin.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{nc: nc, js: js, in: in}
}

// producer opens a producer, which declares forq's streams.
func (b *bundle) producer(t *testing.T) *producer.Producer {
	t.Helper()
	p, err := producer.New(t.Context(), b.nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// worker runs a worker of queue with handler h for type "t" until the
// test ends.
func (b *bundle) worker(t *testing.T, queue string, concurrency int, h consumer.HandlerFunc) {
	t.Helper()
	w, err := consumer.New(t.Context(), b.nc, consumer.Config{Queues: []string{queue}, Concurrency: concurrency,
		StatusInterval: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("t", h)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
}

func enqueue(t *testing.T, p *producer.Producer, payload string, opts ...producer.Option) string {
	t.Helper()
	info, err := p.Enqueue(t.Context(), forq.Task{Type: "t", Payload: []byte(payload)}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

// wantErr checks that err wraps target and names every one of names.
func wantErr(t *testing.T, what string, err, target error, names ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got %v, want an error wrapping %q", what, err, target)
		return
	}
	for _, n := range names {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("%s: error %q does not name %q", what, err, n)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	for name, c := range map[string]struct {
		nc  *nats.Conn
		cfg admin.Config
	}{
		"no connection":             {nil, admin.Config{}},
		"negative replicas":         {nc, admin.Config{Replicas: -1}},
		"negative result TTL":       {nc, admin.Config{ResultTTL: -time.Second}},
		"negative duplicate window": {nc, admin.Config{DuplicateWindow: -time.Second}},
	} {
		if _, err := admin.New(t.Context(), c.nc, c.cfg); !errors.Is(err, forq.ErrInvalidOption) {
			t.Errorf("%s: got %v, want forq.ErrInvalidOption", name, err)
		}
	}
}

// On a broker where no forq process ran, the reads find nothing and
// create nothing, and the queue-bound ones name the unknown queue.
func TestEmptyBrokerReadsCreateNothing(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	st, err := b.in.Stats(ctx)
	if err != nil || len(st.Queues) != 0 || len(st.Workers) != 0 {
		t.Errorf("Stats: %+v, %v; want no queues, no workers", st, err)
	}
	if ds, err := b.in.DeadLetters(ctx, ""); err != nil || len(ds) != 0 {
		t.Errorf("DeadLetters: %v, %v; want none", ds, err)
	}
	if ss, err := b.in.Schedules(ctx); err != nil || len(ss) != 0 {
		t.Errorf("Schedules: %v, %v; want none", ss, err)
	}
	_, err = b.in.Schedule(ctx, "nightly")
	wantErr(t, "Schedule of an empty broker", err, admin.ErrScheduleNotFound, "nightly")
	_, err = b.in.Tasks(ctx, "ghost")
	wantErr(t, "Tasks of an empty broker", err, admin.ErrNoQueue, "ghost")
	wantErr(t, "Resume of an empty broker", b.in.Resume(ctx, "ghost"), admin.ErrNoQueue, "ghost")
	if n, err := b.in.PurgeQueue(ctx, "ghost"); n != 0 || err != nil {
		t.Errorf("PurgeQueue of an empty broker: %d, %v; want 0, nil", n, err)
	}
	if n, err := b.in.PurgeDead(ctx, []admin.DeadLetter{{Seq: 1}}); n != 0 || err != nil {
		t.Errorf("PurgeDead of an empty broker: %d, %v; want 0, nil", n, err)
	}
	names := b.js.StreamNames(ctx)
	for n := range names.Name() {
		t.Errorf("the reads created stream %s", n)
	}
}

// Every method that takes a queue name refuses a bad one, naming it.
func TestBadQueueName(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	const bad = "bad.queue"
	calls := map[string]func() error{
		"Stats":          func() error { _, err := b.in.Stats(ctx, "ok", bad); return err },
		"Tasks":          func() error { _, err := b.in.Tasks(ctx, bad); return err },
		"DeadLetters":    func() error { _, err := b.in.DeadLetters(ctx, bad); return err },
		"FindDead":       func() error { _, err := b.in.FindDeadLetters(ctx, bad, []string{"1"}); return err },
		"RetryDead":      func() error { _, err := b.in.RetryDead(ctx, admin.DeadLetter{ID: "a", Queue: bad}); return err },
		"Pause":          func() error { _, err := b.in.Pause(ctx, bad, admin.PauseForever, 0); return err },
		"Resume":         func() error { return b.in.Resume(ctx, bad) },
		"Paused":         func() error { _, _, err := b.in.Paused(ctx, bad); return err },
		"SetRecordAll":   func() error { return b.in.SetRecordAll(ctx, bad, true) },
		"PurgeQueue":     func() error { _, err := b.in.PurgeQueue(ctx, bad); return err },
		"Schedule":       func() error { _, err := b.in.Schedule(ctx, bad); return err },
		"RemoveSchedule": func() error { return b.in.RemoveSchedule(ctx, bad) },
	}
	for name, call := range calls {
		wantErr(t, name, call(), forq.ErrInvalidQueue, bad)
	}
}

// Stats counts each queue's tasks by level, its delayed tasks and dead
// letters, its pause and record-all, and lists only the queues asked for.
func TestStats(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	p := b.producer(t)
	// Pausing declares the queue's consumers, one per level.
	if _, err := b.in.Pause(ctx, "sq", admin.PauseForever, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.in.SetRecordAll(ctx, "sq", true); err != nil {
		t.Fatal(err)
	}
	for prio, n := range map[forq.Priority]int{forq.PriorityHigh: 3, forq.PriorityNormal: 1, forq.PriorityLow: 2} {
		for range n {
			enqueue(t, p, "x", producer.WithQueue("sq"), producer.WithPriority(prio))
		}
	}
	enqueue(t, p, "later", producer.WithQueue("sq"), producer.WithDelay(time.Hour))
	enqueue(t, p, "elsewhere", producer.WithQueue("other"), producer.WithDelay(time.Hour))

	st, err := b.in.Stats(ctx, "sq", "unknown")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Queues) != 2 || st.Queues[0].Queue != "sq" || st.Queues[1].Queue != "unknown" {
		t.Fatalf("Stats(sq, unknown): queues %+v; want sq and unknown", st.Queues)
	}
	if q := st.Queues[0]; !sqStats(q) {
		t.Errorf("sq: got %+v, want 6 queued (3 high, 1 normal, 2 low), 1 scheduled, paused, recording all", q)
	}
	if u := st.Queues[1]; u.Queued != 0 || u.Scheduled != 0 || u.Paused || u.QueuedByPriority["normal"] != 0 {
		t.Errorf("unknown queue: got %+v, want a line of zeros", u)
	}
	all, err := b.in.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Queues) != 2 || all.Queues[0].Queue != "other" || all.Queues[0].Scheduled != 1 || all.Queues[1].Queue != "sq" {
		t.Errorf("Stats(): queues %+v; want other (1 scheduled) and sq", all.Queues)
	}
}

// sqStats reports whether q is TestStats' queue sq as it should be: 6
// queued (3 high, 1 normal, 2 low), 1 scheduled, paused, recording all,
// nothing running.
func sqStats(q admin.QueueStats) bool {
	return q.Queued == 6 && q.QueuedByPriority["high"] == 3 && q.QueuedByPriority["normal"] == 1 && q.QueuedByPriority["low"] == 2 &&
		q.Scheduled == 1 && q.Paused && q.RecordAll && q.Running == 0
}

// Stats lists a live worker, the task it runs and what it did in the last
// minute (a success counts once in DONE/1m, as in
// forq_tasks_processed_total; a failed attempt in FAILED/1m only).
func TestStatsRunningAndWorkers(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	p := b.producer(t)
	release := make(chan struct{})
	var once sync.Once
	b.worker(t, "w", 2, func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		switch string(task.Payload) {
		case "block":
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		case "fail":
			return nil, fmt.Errorf("no: %w", consumer.ErrPermanent)
		}
		return nil, nil
	})
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the worker's stop, which waits for it
	enqueue(t, p, "fast", producer.WithQueue("w"))
	enqueue(t, p, "fail", producer.WithQueue("w"))
	block := enqueue(t, p, "block", producer.WithQueue("w"))
	testutil.Eventually(t, 10*time.Second, func() bool {
		st, err := b.in.Stats(ctx, "w")
		return err == nil && st.Queues[0].Running == 1 && len(st.Workers) == 1 && st.Queues[0].Failed1m == 1
	}, "Stats never showed 1 running, 1 failed and the worker")
	st, _ := b.in.Stats(ctx, "w")
	q := st.Queues[0]
	if q.Processed1m != 1 || q.Unacked != 1 || q.Retrying != 0 {
		t.Errorf("queue: %+v; want 1 done in the last minute (the success, not the dead letter), 1 unacked, none retrying", q)
	}
	w := st.Workers[0]
	if w.Queues[0] != "w" || w.Host == "" || w.PID != os.Getpid() || w.Succeeded != 1 || len(w.Running) != 1 || w.Running[0].ID != block {
		t.Errorf("worker: %+v; want this process, 1 succeeded, running %s", w, block)
	}
	once.Do(func() { close(release) })
	testutil.Eventually(t, 10*time.Second, func() bool {
		st, err := b.in.Stats(ctx, "w")
		return err == nil && st.Queues[0].Running == 0
	}, "Stats still shows a running task after it finished")
}

// A queue whose tasks were published before it had a consumer shows them
// queued, by level, and is listed among all queues.
func TestStatsQueueWithoutConsumer(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	p := b.producer(t)
	for range 3 {
		enqueue(t, p, "x", producer.WithQueue("reports"))
	}
	enqueue(t, p, "x", producer.WithQueue("reports"), producer.WithPriority(forq.PriorityHigh))
	for _, st := range []func() (*admin.Stats, error){
		func() (*admin.Stats, error) { return b.in.Stats(ctx) },
		func() (*admin.Stats, error) { return b.in.Stats(ctx, "reports") },
	} {
		got, err := st()
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Queues) != 1 {
			t.Fatalf("queues %+v; want reports alone", got.Queues)
		}
		q := got.Queues[0]
		if q.Queue != "reports" || q.Queued != 4 || q.QueuedByPriority["high"] != 1 || q.QueuedByPriority["normal"] != 3 || q.Running != 0 {
			t.Errorf("reports: %+v; want 4 queued (1 high, 3 normal), none running", q)
		}
	}
	// With a consumer on the normal level only, the high task still counts.
	if _, err := b.js.CreateOrUpdateConsumer(ctx, forq.StreamTasks, jetstream.ConsumerConfig{Durable: "reports",
		FilterSubject: "forq.tasks.reports", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	got, err := b.in.Stats(ctx, "reports")
	if err != nil || got.Queues[0].Queued != 4 || got.Queues[0].QueuedByPriority["high"] != 1 {
		t.Errorf("with a normal consumer: %+v, %v; want 4 queued, 1 high", got, err)
	}
}
