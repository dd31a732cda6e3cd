package producer_test

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// countReplies counts the messages the broker sends to any inbox: its
// acknowledgements to producers.
func countReplies(t *testing.T, url string) *atomic.Int64 {
	t.Helper()
	spy := testutil.Connect(t, url)
	var n atomic.Int64
	sub, err := spy.Subscribe("_INBOX.>", func(*nats.Msg) { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	return &n
}

func queueCount(t *testing.T, js jetstream.JetStream, queue string) uint64 {
	t.Helper()
	st, err := js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	i, err := st.Info(t.Context(), jetstream.WithSubjectFilter(wire.TaskSubject(queue)))
	if err != nil {
		t.Fatal(err)
	}
	return i.State.Subjects[wire.TaskSubject(queue)]
}

// A batch of new tasks is stored whole, each with its own ID for
// de-duplication, and the broker answers it with a few flow
// acknowledgements instead of one per task.
func TestEnqueueManySendsOneBatch(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	replies := countReplies(t, s.ClientURL())
	const n = 3000
	tasks := make([]forq.Task, n)
	for i := range tasks {
		tasks[i] = forq.Task{Queue: "fast", Type: "t", Payload: fmt.Appendf(nil, "%d", i)}
	}
	infos, err := p.EnqueueMany(t.Context(), tasks)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	if got := replies.Load(); got > n/100 {
		t.Errorf("the broker sent %d acknowledgements for %d tasks; want a few flow acks for one batch", got, n)
	}
	if got := queueCount(t, js, "fast"); got != n {
		t.Fatalf("queue holds %d tasks, want %d", got, n)
	}
	ids := map[string]bool{}
	for i, in := range infos {
		if in.ID == "" || in.ID != tasks[i].ID || ids[in.ID] || in.Duplicate {
			t.Fatalf("info %d: %+v (task ID %q)", i, in, tasks[i].ID)
		}
		ids[in.ID] = true
	}
	st, _ := js.Stream(t.Context(), forq.StreamTasks)
	last, err := st.GetLastMsgForSubject(t.Context(), wire.TaskSubject("fast"))
	if err != nil {
		t.Fatal(err)
	}
	if infos[n-1].Sequence != last.Sequence {
		t.Errorf("last task's sequence %d, want the stream's %d", infos[n-1].Sequence, last.Sequence)
	}
	if got := last.Header.Get("Nats-Msg-Id"); got != tasks[n-1].ID {
		t.Errorf("last message's %s is %q, want %q", "Nats-Msg-Id", got, tasks[n-1].ID)
	}
	first, err := st.GetMsg(t.Context(), last.Sequence-n+1)
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Header.Get("Nats-Msg-Id"); got != tasks[0].ID || string(first.Data) != "0" {
		t.Errorf("first message: ID %q payload %q, want %q and 0: the batch is not in order", got, first.Data, tasks[0].ID)
	}

	// The same slice again: the IDs are set now, so each task is
	// acknowledged on its own, as a duplicate.
	again, err := p.EnqueueMany(t.Context(), tasks)
	if err != nil {
		t.Fatal(err)
	}
	for i, in := range again {
		if !in.Duplicate || in.ID != tasks[i].ID {
			t.Fatalf("again %d: %+v, want a duplicate of %s", i, in, tasks[i].ID)
		}
	}
	if got := queueCount(t, js, "fast"); got != n {
		t.Fatalf("queue holds %d tasks after the repeat, want %d", got, n)
	}
}

// A task the broker refuses ends the batch: the tasks before it are
// stored, it has the broker's error, the ones after are not stored, and
// enqueueing the same slice again completes it without a duplicate.
func TestEnqueueManyBatchStopsAtRefusedTask(t *testing.T) {
	for _, bad := range []int{0, 5, 9} {
		t.Run(fmt.Sprintf("task %d refused", bad), func(t *testing.T) {
			s := testutil.Broker(t)
			nc := testutil.Connect(t, s.ClientURL())
			js, _ := jetstream.New(nc)
			p, err := producer.New(t.Context(), nc, producer.Config{})
			if err != nil {
				t.Fatal(err)
			}
			st, err := js.Stream(t.Context(), forq.StreamTasks)
			if err != nil {
				t.Fatal(err)
			}
			cfg := st.CachedInfo().Config
			if !cfg.AllowBatchPublish {
				t.Fatalf("%s does not allow batched publishing", forq.StreamTasks)
			}
			// The stream takes messages of at most 1 KiB; task bad is 2 KiB.
			cfg.MaxMsgSize = 1024
			if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
			tasks := make([]forq.Task, 10)
			for i := range tasks {
				tasks[i] = forq.Task{Queue: "full", Type: "t", Payload: fmt.Appendf(nil, "%d", i)}
			}
			tasks[bad].Payload = make([]byte, 2048)
			infos, err := p.EnqueueMany(t.Context(), tasks)
			var be *producer.BatchError
			if !errors.As(err, &be) {
				t.Fatalf("EnqueueMany with a task too large for the stream: %v, want a *BatchError", err)
			}
			checkStoppedAt(t, be, infos, tasks, bad)
			if got := queueCount(t, js, "full"); got != uint64(bad) {
				t.Fatalf("queue holds %d tasks, want %d", got, bad)
			}

			cfg.MaxMsgSize = -1
			if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
				t.Fatal(err)
			}
			infos, err = p.EnqueueMany(t.Context(), tasks)
			if err != nil {
				t.Fatal(err)
			}
			for i, in := range infos {
				if in.Duplicate != (i < bad) || in.ID != tasks[i].ID {
					t.Errorf("again %d: %+v, want duplicate=%v", i, in, i < bad)
				}
			}
			if got := queueCount(t, js, "full"); got != 10 {
				t.Fatalf("queue holds %d tasks, want 10", got)
			}
		})
	}
}

// checkStoppedAt checks the outcome of a batch the broker stopped at task
// bad: the tasks before it stored, it with the broker's message size
// error, the ones after not stored.
func checkStoppedAt(t *testing.T, be *producer.BatchError, infos []producer.Info, tasks []forq.Task, bad int) {
	t.Helper()
	for i, e := range be.Errs {
		switch {
		case i < bad && e != nil:
			t.Errorf("task %d: %v, want stored", i, e)
		case i < bad && infos[i].ID != tasks[i].ID:
			t.Errorf("task %d: info %+v", i, infos[i])
		case i == bad && (e == nil || !strings.Contains(e.Error(), "maximum")):
			t.Errorf("task %d: %v, want the broker's message size error", i, e)
		// Not stored: published before the broker's refusal came back,
		// or not published at all once it had (either is a race the
		// broker's speed decides).
		case i > bad && (e == nil || !strings.Contains(e.Error(), "not stored") && !strings.Contains(e.Error(), "not published")):
			t.Errorf("task %d: %v, want not stored or not published", i, e)
		}
	}
}

// A stream that does not take batches (turned off by an operator) gets
// the tasks one by one, each with its own sequence.
func TestEnqueueManyWithoutBatching(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.AllowBatchPublish = false
	if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	tasks := make([]forq.Task, 100)
	for i := range tasks {
		tasks[i] = forq.Task{Queue: "plain", Type: "t"}
	}
	infos, err := p.EnqueueMany(t.Context(), tasks)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for i, in := range infos {
		if in.Sequence == 0 || seen[in.Sequence] {
			t.Fatalf("info %d: %+v, want a sequence of its own", i, in)
		}
		seen[in.Sequence] = true
	}
	if got := queueCount(t, js, "plain"); got != 100 {
		t.Fatalf("queue holds %d tasks, want 100", got)
	}

	// The next producer to start turns batching back on, as it does on a
	// stream declared by an older forq.
	if _, err := producer.New(t.Context(), nc, producer.Config{}); err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !info.Config.AllowBatchPublish {
		t.Errorf("%s does not allow batched publishing after a producer started", forq.StreamTasks)
	}
}

// A window smaller than the broker's usual flow interval still moves: the
// producer asks for a flow ack at least every half window.
func TestEnqueueManyBatchSmallWindow(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	p, err := producer.New(t.Context(), nc, producer.Config{Window: 10, AckTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tasks := make([]forq.Task, 1000)
	for i := range tasks {
		tasks[i] = forq.Task{Queue: "small", Type: "t"}
	}
	if _, err := p.EnqueueMany(t.Context(), tasks); err != nil {
		t.Fatal(err)
	}
	if got := queueCount(t, js, "small"); got != 1000 {
		t.Fatalf("queue holds %d tasks, want 1000", got)
	}
}

// A broker that restarts in the middle of a batch forgets the batch: the
// producer stops there, and enqueueing the same slice again stores every
// task exactly once.
func TestEnqueueManyBatchBrokerRestart(t *testing.T) {
	dir := t.TempDir()
	s := testutil.BrokerIn(t, dir, 0)
	u, err := url.Parse(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	nc := testutil.Connect(t, s.ClientURL())
	// A small window keeps the batch going long enough to restart the
	// broker under it.
	p, err := producer.New(t.Context(), nc, producer.Config{Window: 10, AckTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	tasks := make([]forq.Task, n)
	for i := range tasks {
		tasks[i] = forq.Task{Queue: "restart", Type: "t", Payload: fmt.Appendf(nil, "%d", i)}
	}
	watcher := testutil.Connect(t, s.ClientURL())
	wjs, _ := jetstream.New(watcher)
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		for {
			st, err := wjs.Stream(t.Context(), forq.StreamTasks)
			if err == nil && st.CachedInfo().State.Msgs >= 1000 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		s.Shutdown()
		s = testutil.BrokerIn(t, dir, port)
	}()
	_, err = p.EnqueueMany(t.Context(), tasks)
	<-restarted
	var be *producer.BatchError
	if !errors.As(err, &be) {
		t.Fatalf("EnqueueMany across a broker restart: %v, want a *BatchError", err)
	}
	t.Logf("first attempt: %v", err)

	testutil.Eventually(t, 10*time.Second, nc.IsConnected, "producer did not reconnect")
	js, _ := jetstream.New(nc)
	stored := queueCount(t, js, "restart")
	if stored == 0 || stored == n {
		t.Fatalf("%d tasks stored before the restart; the test wants the restart mid-batch", stored)
	}
	infos, err := p.EnqueueMany(t.Context(), tasks)
	if err != nil {
		t.Fatal(err)
	}
	dups := uint64(0)
	for i, in := range infos {
		if in.ID != tasks[i].ID {
			t.Fatalf("task %d enqueued as %s, want %s", i, in.ID, tasks[i].ID)
		}
		if in.Duplicate {
			dups++
		}
	}
	if got := queueCount(t, js, "restart"); got != n {
		t.Fatalf("queue holds %d tasks after the retry, want %d", got, n)
	}
	if dups != stored {
		t.Errorf("retry found %d duplicates, want the %d stored before", dups, stored)
	}
}
