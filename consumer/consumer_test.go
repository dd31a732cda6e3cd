package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(childWorker(mode)) // a worker process of a test (attempts_test.go)
	}
	goleak.VerifyTestMain(m)
}

type bundle struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	p   *producer.Producer
	url string
}

func setup(t *testing.T) *bundle {
	t.Helper()
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{nc: nc, js: js, p: p, url: s.ClientURL()}
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// start runs w until the test ends and checks that Run returned want.
func start(t *testing.T, w *consumer.Worker) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-errc })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func newWorker(t *testing.T, b *bundle, cfg consumer.Config) *consumer.Worker {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	w, err := consumer.New(t.Context(), b.nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func deadMsgs(t *testing.T, b *bundle, queue string, want int) []*jetstream.RawStreamMsg {
	t.Helper()
	s, err := b.js.Stream(t.Context(), forq.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*jetstream.RawStreamMsg
	testutil.Eventually(t, 20*time.Second, func() bool {
		info, err := s.Info(t.Context(), jetstream.WithSubjectFilter(wire.DeadSubject(queue)))
		return err == nil && int(info.State.Msgs) >= want
	}, "dead letters on %s: want %d", queue, want)
	for seq := uint64(1); len(msgs) < want; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatalf("get dead letter %d: %v", seq, err)
		}
		if m.Subject == wire.DeadSubject(queue) {
			msgs = append(msgs, m)
		}
	}
	return msgs
}

// ackState reads the queue's consumer: tasks delivered and not acked, and
// tasks not delivered yet. Until a worker declares the consumer, every
// task counts as not delivered.
func ackState(t *testing.T, b *bundle, queue string) (ackPending, pending uint64) {
	t.Helper()
	c, err := b.js.Consumer(t.Context(), forq.StreamTasks, wire.ConsumerName(queue))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, 1
	}
	if err != nil {
		t.Fatal(err)
	}
	i, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return uint64(i.NumAckPending), i.NumPending
}

func waitAcked(t *testing.T, b *bundle, queue string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ap, p := ackState(t, b, queue)
		if ap == 0 && p == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %d tasks delivered and not acked, %d not delivered", ap, p)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPoisonTasksAreDeadLetteredWhileOthersComplete(t *testing.T) {
	b := setup(t)
	w := newWorker(t, b, consumer.Config{Queues: []string{"mixed"}, Concurrency: 8, RetryBase: 10 * time.Millisecond})
	var ok sync.Map
	var okCount, failRuns, panicRuns atomic.Int64
	w.HandleFunc("ok", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		if _, dup := ok.LoadOrStore(task.ID, true); dup {
			t.Errorf("task %s ran twice", task.ID)
		}
		okCount.Add(1)
		return nil, nil
	})
	w.HandleFunc("fail", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		failRuns.Add(1)
		return nil, errors.New("boom: the database is gone")
	})
	w.HandleFunc("panic", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		panicRuns.Add(1)
		var m map[string]int
		m["x"]++ //nolint:staticcheck // SA5000: the nil map write is the panic this handler is for
		return nil, nil
	})
	tasks := []forq.Task{{Type: "fail", ID: "poison-fail"}, {Type: "panic", ID: "poison-panic"}}
	for i := range 1000 {
		tasks = append(tasks, forq.Task{Type: "ok", Payload: fmt.Appendf(nil, `{"n":%d}`, i)})
	}
	if _, err := b.p.EnqueueMany(t.Context(), tasks, producer.WithQueue("mixed"), producer.WithMaxAttempts(3)); err != nil {
		t.Fatal(err)
	}
	stop := start(t, w)
	dead := deadMsgs(t, b, "mixed", 2)
	testutil.Eventually(t, 20*time.Second, func() bool { return okCount.Load() == 1000 }, "ok tasks done: got %d, want 1000", okCount.Load())
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := failRuns.Load(); got != 3 {
		t.Errorf("failing handler ran %d times, want 3", got)
	}
	if got := panicRuns.Load(); got != 3 {
		t.Errorf("panicking handler ran %d times, want 3", got)
	}
	byID := map[string]*jetstream.RawStreamMsg{}
	for _, m := range dead {
		byID[m.Header.Get("Forq-Id")] = m
	}
	for id, want := range map[string]string{"poison-fail": "boom: the database is gone", "poison-panic": "assignment to entry in nil map"} {
		m := byID[id]
		if m == nil {
			t.Fatalf("%s not in %s", id, forq.StreamDead)
		}
		if got := m.Header.Get("Forq-Error"); !strings.Contains(got, want) {
			t.Errorf("%s: %s = %q, want it to contain %q", id, "Forq-Error", got, want)
		}
		if got := m.Header.Get("Forq-Attempts"); got != "3" {
			t.Errorf("%s: %s = %q, want 3", id, "Forq-Attempts", got)
		}
		r, err := b.p.Result(t.Context(), id)
		if err != nil {
			t.Fatalf("result of %s: %v", id, err)
		}
		if r.State != forq.StateDead || r.Attempts != 3 || !strings.Contains(r.Error, want) {
			t.Errorf("result of %s: got state %s attempts %d error %q, want dead, 3, %q", id, r.State, r.Attempts, r.Error, want)
		}
	}
	info, err := b.js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	if si, _ := info.Info(t.Context()); si.State.Msgs != 0 {
		t.Errorf("%s holds %d messages after the run, want 0", forq.StreamTasks, si.State.Msgs)
	}
}

func TestResultsAndBadTasks(t *testing.T) {
	b := setup(t)
	w := newWorker(t, b, consumer.Config{Queues: []string{"q"}, Concurrency: 4, RetryBase: 10 * time.Millisecond})
	w.HandleFunc("upper", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		return []byte(strings.ToUpper(string(task.Payload))), nil
	})
	w.HandleFunc("block", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	w.HandleFunc("strict", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		return nil, fmt.Errorf("payload %q is not JSON: %w", task.Payload, consumer.ErrPermanent)
	})
	start(t, w)

	tests := []struct {
		name      string
		task      forq.Task
		opts      []producer.Option
		state     forq.State
		attempts  int
		result    string
		errSubstr string
	}{
		{name: "success", task: forq.Task{Type: "upper", Payload: []byte("hi")}, state: forq.StateSucceeded, attempts: 1, result: "HI"},
		{name: "unknown type", task: forq.Task{Type: "nope"}, opts: []producer.Option{producer.WithMaxAttempts(2)}, state: forq.StateDead, attempts: 2, errSubstr: `no handler for task type "nope" on this worker (it handles [block strict upper])`},
		{name: "timeout", task: forq.Task{Type: "block"}, opts: []producer.Option{producer.WithTimeout(100 * time.Millisecond), producer.WithMaxAttempts(1)}, state: forq.StateDead, attempts: 1, errSubstr: "task timed out after 100ms"},
		{name: "permanent", task: forq.Task{Type: "strict", Payload: []byte("{oops")}, opts: []producer.Option{producer.WithMaxAttempts(5)}, state: forq.StateDead, attempts: 1, errSubstr: "is not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := append([]producer.Option{producer.WithQueue("q"), producer.WithRecord()}, tt.opts...)
			info, err := b.p.Enqueue(t.Context(), tt.task, opts...)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			r, err := b.p.Wait(ctx, info.ID)
			if err != nil {
				t.Fatal(err)
			}
			if r.State != tt.state || r.Attempts != tt.attempts || string(r.Result) != tt.result || !strings.Contains(r.Error, tt.errSubstr) {
				t.Errorf("got state %s attempts %d result %q error %q, want %s %d %q %q", r.State, r.Attempts, r.Result, r.Error, tt.state, tt.attempts, tt.result, tt.errSubstr)
			}
			if r.WorkerPID == 0 || r.StartedAt.IsZero() || r.FinishedAt.Before(r.StartedAt) {
				t.Errorf("got pid %d started %v finished %v, want a pid and ordered times", r.WorkerPID, r.StartedAt, r.FinishedAt)
			}
		})
	}
}

func TestMalformedHeadersFromOtherPublishers(t *testing.T) {
	b := setup(t)
	w := newWorker(t, b, consumer.Config{Queues: []string{"raw"}})
	var ran atomic.Int64
	w.HandleFunc("echo", func(ctx context.Context, task *consumer.Task) ([]byte, error) { ran.Add(1); return task.Payload, nil })
	start(t, w)
	for _, h := range []map[string]string{
		{"Forq-Type": "echo", "Forq-Max-Attempts": "many"},
		{"Forq-Type": "echo", "Forq-Timeout": "soon"},
		{},
	} {
		m := nats.NewMsg(wire.TaskSubject("raw"))
		for k, v := range h {
			m.Header.Set(k, v)
		}
		if _, err := b.js.PublishMsg(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
	dead := deadMsgs(t, b, "raw", 3)
	var errs []string
	for _, m := range dead {
		errs = append(errs, m.Header.Get("Forq-Error"))
	}
	all := strings.Join(errs, "\n")
	for _, want := range []string{`Forq-Max-Attempts: "many" is not a positive integer`, `Forq-Timeout: "soon" is not a positive duration`, "no Forq-Type header"} {
		if !strings.Contains(all, want) {
			t.Errorf("dead-letter errors %q: want one containing %q", all, want)
		}
	}
	if ran.Load() != 0 {
		t.Errorf("handler ran %d times for malformed tasks, want 0", ran.Load())
	}
}

// A delivery lost with its worker (which may have died of another task) is
// not an attempt: a task allowed one attempt still runs, as attempt 1.
// (Before issue 14 this task was dead-lettered without running, "delivered
// 2 times but allowed 1 attempts".)
func TestDeliveryLostToADeadWorkerIsNoAttempt(t *testing.T) {
	b := setup(t)
	// A first worker takes the task and dies without acking: simulated by
	// fetching it on the shared consumer and never answering.
	w := newWorker(t, b, consumer.Config{Queues: []string{"crashy"}, AckWait: 500 * time.Millisecond})
	var ran, attempt atomic.Int64
	w.HandleFunc("x", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		ran.Add(1)
		attempt.Store(int64(task.Attempt))
		return nil, nil
	})
	if _, err := b.p.Enqueue(t.Context(), forq.Task{Type: "x", ID: "crasher", Queue: "crashy", MaxAttempts: 1}); err != nil {
		t.Fatal(err)
	}
	tasks, err := b.js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	c, err := topology.EnsureConsumer(t.Context(), b.js.Conn(), tasks, "crashy", 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range batch.Messages() {
		// taken, never acked
	}
	start(t, w)
	testutil.Eventually(t, 20*time.Second, func() bool { return ran.Load() > 0 }, "the task did not run again")
	time.Sleep(time.Second) // a wrong second run or dead letter would show by now
	if ran.Load() != 1 || attempt.Load() != 1 {
		t.Errorf("handler ran %d times, as attempt %d; want once, as attempt 1", ran.Load(), attempt.Load())
	}
	s, err := b.js.Stream(t.Context(), forq.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(t.Context()); err != nil || info.State.Msgs != 0 {
		t.Errorf("dead letters: %v, %v; want none", info.State.Msgs, err)
	}
	// It ran alone (a delivery of it was lost), so its outcome is recorded
	// although it did not ask for a record.
	r, err := b.p.Result(t.Context(), "crasher")
	if err != nil || r.State != forq.StateSucceeded || r.Attempts != 1 || r.Run != 2 || r.Alone {
		t.Errorf("got record %+v, %v; want succeeded, attempt 1, run 2, not alone any more", r, err)
	}
	t.Logf("lost delivery: ran %d time(s) after it, attempt %d, record %s run %d", ran.Load(), attempt.Load(), r.State, r.Run)
}

func TestLongTaskOutlivesAckWaitWithoutRedelivery(t *testing.T) {
	b := setup(t)
	w := newWorker(t, b, consumer.Config{Queues: []string{"long"}, AckWait: 500 * time.Millisecond, Concurrency: 2})
	var runs atomic.Int64
	w.HandleFunc("slow", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		runs.Add(1)
		select {
		case <-time.After(2 * time.Second): // four ack waits
			return []byte("done"), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	start(t, w)
	info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "slow", Queue: "long", Record: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	r, err := b.p.Wait(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != forq.StateSucceeded || r.Attempts != 1 || runs.Load() != 1 {
		t.Errorf("got state %s attempts %d runs %d, want succeeded 1 1", r.State, r.Attempts, runs.Load())
	}
}

func TestDuplicateIDIsEnqueuedOnce(t *testing.T) {
	b := setup(t)
	first, err := b.p.Enqueue(t.Context(), forq.Task{Type: "x", ID: "order-42"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := b.p.Enqueue(t.Context(), forq.Task{Type: "x", ID: "order-42"})
	if err != nil {
		t.Fatal(err)
	}
	if first.Duplicate || !second.Duplicate || first.Sequence != second.Sequence {
		t.Errorf("got first %+v second %+v, want the second a duplicate of the first", first, second)
	}
	s, _ := b.js.Stream(t.Context(), forq.StreamTasks)
	if si, _ := s.Info(t.Context()); si.State.Msgs != 1 {
		t.Errorf("stream holds %d tasks, want 1", si.State.Msgs)
	}
}

func TestGracefulStop(t *testing.T) {
	b := setup(t)
	t.Run("running tasks finish within grace", func(t *testing.T) {
		w := newWorker(t, b, consumer.Config{Queues: []string{"g1"}, Grace: 5 * time.Second})
		started := make(chan struct{})
		w.HandleFunc("slow", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
			close(started)
			time.Sleep(300 * time.Millisecond)
			return []byte("finished"), nil
		})
		stop := start(t, w)
		info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "slow", Queue: "g1", Record: true})
		if err != nil {
			t.Fatal(err)
		}
		<-started
		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		r, err := b.p.Result(t.Context(), info.ID)
		if err != nil || r.State != forq.StateSucceeded {
			t.Fatalf("got %+v, %v; want succeeded", r, err)
		}
	})
	t.Run("tasks past grace are redelivered at once", func(t *testing.T) {
		w := newWorker(t, b, consumer.Config{Queues: []string{"g2"}, Grace: 200 * time.Millisecond, AckWait: time.Minute})
		started := make(chan struct{})
		w.HandleFunc("stuck", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
			close(started)
			<-ctx.Done()
			return nil, ctx.Err()
		})
		stop := start(t, w)
		info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "stuck", Queue: "g2", Record: true})
		if err != nil {
			t.Fatal(err)
		}
		<-started
		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		// A second worker gets it long before the one-minute ack wait.
		w2 := newWorker(t, b, consumer.Config{Queues: []string{"g2"}})
		w2.HandleFunc("stuck", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
			return fmt.Appendf(nil, "attempt %d", task.Attempt), nil
		})
		start(t, w2)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		r, err := b.p.Wait(ctx, info.ID)
		if err != nil {
			t.Fatal(err)
		}
		// A hand-back at shutdown is not an attempt (it was attempt 2
		// before issue 14).
		if string(r.Result) != "attempt 1" {
			t.Errorf("got result %q, want %q", r.Result, "attempt 1")
		}
	})
}

func TestMaxTasks(t *testing.T) {
	b := setup(t)
	var tasks []forq.Task
	for range 25 {
		tasks = append(tasks, forq.Task{Type: "x", Queue: "mt"})
	}
	if _, err := b.p.EnqueueMany(t.Context(), tasks); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int64
	for i, want := range []int64{10, 10, 5} {
		w := newWorker(t, b, consumer.Config{Queues: []string{"mt"}, Concurrency: 4, MaxTasks: 10})
		w.HandleFunc("x", func(ctx context.Context, task *consumer.Task) ([]byte, error) { runs.Add(1); return nil, nil })
		if i < 2 {
			if err := w.Run(t.Context()); !errors.Is(err, consumer.ErrMaxTasks) {
				t.Fatalf("worker %d: Run = %v, want ErrMaxTasks", i, err)
			}
		} else {
			stop := start(t, w)
			testutil.Eventually(t, 10*time.Second, func() bool { return w.Processed() == 5 }, "third worker processed %d, want 5", w.Processed())
			_ = stop()
		}
		if got := w.Processed(); got != want {
			t.Errorf("worker %d processed %d, want %d", i, got, want)
		}
	}
	if runs.Load() != 25 {
		t.Errorf("ran %d tasks, want 25", runs.Load())
	}
}

// Concurrency slow tasks all run at once, however few threads the process
// has, and no more than that: a task that blocks never keeps a queued one
// from starting, and the one past Concurrency waits for a free slot.
func TestSlowTasksRunConcurrently(t *testing.T) {
	for _, procs := range []int{1, 2} {
		t.Run(fmt.Sprintf("GOMAXPROCS=%d", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			const n = 64
			b := setup(t)
			w := newWorker(t, b, consumer.Config{Queues: []string{"slow"}, Concurrency: n})
			var running, most atomic.Int64
			release := make(chan struct{})
			w.HandleFunc("slow", func(ctx context.Context, _ *consumer.Task) ([]byte, error) {
				r := running.Add(1)
				defer running.Add(-1)
				for m := most.Load(); r > m && !most.CompareAndSwap(m, r); m = most.Load() {
				}
				select {
				case <-release:
				case <-ctx.Done():
				}
				return nil, nil
			})
			tasks := make([]forq.Task, n+1)
			for i := range tasks {
				tasks[i] = forq.Task{Queue: "slow", Type: "slow"}
			}
			if _, err := b.p.EnqueueMany(t.Context(), tasks); err != nil {
				t.Fatal(err)
			}
			start(t, w)
			testutil.Eventually(t, 20*time.Second, func() bool { return running.Load() == n }, "%d blocked tasks never all ran at once", n)
			time.Sleep(200 * time.Millisecond)
			if r := running.Load(); r != n {
				t.Fatalf("%d tasks running with Concurrency %d", r, n)
			}
			close(release)
			waitAcked(t, b, "slow")
			if m := most.Load(); m != n {
				t.Fatalf("at most %d tasks ran at once, want %d", m, n)
			}
		})
	}
}
