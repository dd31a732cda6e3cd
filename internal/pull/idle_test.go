package pull_test

import (
	"context"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// pullCounter counts the pull requests the broker gets, by consumer and
// kind: "<consumer> wait" or "<consumer> no_wait".
type pullCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

func countPulls(t *testing.T, b *bundle) *pullCounter {
	t.Helper()
	c := &pullCounter{counts: map[string]int{}}
	prefix := "$JS.API.CONSUMER.MSG.NEXT." + forq.StreamTasks + "."
	sub, err := b.nc.Subscribe(prefix+">", func(m *nats.Msg) {
		kind := "wait"
		if strings.Contains(string(m.Data), "no_wait") {
			kind = "no_wait"
		}
		c.mu.Lock()
		c.counts[strings.TrimPrefix(m.Subject, prefix)+" "+kind]++
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return c
}

func (c *pullCounter) reset() {
	c.mu.Lock()
	clear(c.counts)
	c.mu.Unlock()
}

func (c *pullCounter) get() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.counts)
}

func total(m map[string]int) (n int) {
	for _, v := range m {
		n += v
	}
	return n
}

// An idle engine long-polls its normal level, and does not ask it with a
// no-wait pull between two long polls that found nothing, nor ask its high
// and low levels, which never had a task: an idle worker of one queue
// sends one request per IdlePoll. A task enqueued meanwhile still starts.
func TestIdleEngineLongPollsWithoutNoWaitPulls(t *testing.T) {
	b := setup(t)
	const q = "idle"
	e := newEngine(t, b, pull.Config{Queues: []string{q}, Concurrency: 4})
	c := countPulls(t, b)
	var s starts
	start(t, e, handlers{"t": s.handler(0)})
	// The first sweep asks every level; from the second on the engine is
	// idle.
	time.Sleep(2 * idlePoll)
	c.reset()
	time.Sleep(8 * idlePoll)
	got := c.get()
	normal := wire.LevelConsumerName(q, forq.PriorityNormal)
	if got[normal+" no_wait"] != 0 {
		t.Errorf("idle: %d no-wait pulls of the normal level, want 0 (all: %v)", got[normal+" no_wait"], got)
	}
	if n := got[normal+" wait"]; n < 4 || n > 10 {
		t.Errorf("idle: %d long polls of the normal level over 8 idle polls, want 4 to 10 (all: %v)", n, got)
	}
	if n := total(got) - got[normal+" wait"]; n != 0 {
		t.Errorf("idle: %d pulls of the never used levels, want 0 (all: %v)", n, got)
	}
	enqueueN(t, b, 1, producer.WithQueue(q))
	testutil.Eventually(t, 5*time.Second, func() bool { return s.len() == 1 }, "the task enqueued to an idle engine does not start")
}

// With the worker's defaults (IdlePoll 1 s), an idle worker of one queue
// sends at most one pull request a second; once its high level was used,
// that level is re-checked every IdlePoll too (a retried task is not
// published anew), and the low one, never used, still is not.
func TestIdleEngineRequestsPerSecond(t *testing.T) {
	b := setup(t)
	const q = "idlerate"
	e := newEngine(t, b, pull.Config{Queues: []string{q}, Concurrency: 4, IdlePoll: time.Second})
	c := countPulls(t, b)
	var s starts
	start(t, e, handlers{"t": s.handler(0)})
	time.Sleep(1500 * time.Millisecond)
	c.reset()
	time.Sleep(5 * time.Second)
	if got := c.get(); total(got) > 7 {
		t.Errorf("idle for 5 s: %d pull requests, want at most 7 (all: %v)", total(got), got)
	}
	enqueueN(t, b, 1, producer.WithQueue(q), producer.WithPriority(forq.PriorityHigh))
	testutil.Eventually(t, 5*time.Second, func() bool { return s.len() == 1 }, "the high task does not start")
	time.Sleep(1500 * time.Millisecond)
	c.reset()
	time.Sleep(5 * time.Second)
	got := c.get()
	high := wire.LevelConsumerName(q, forq.PriorityHigh)
	low := wire.LevelConsumerName(q, forq.PriorityLow)
	if n := got[high+" no_wait"]; n < 3 || n > 7 {
		t.Errorf("idle for 5 s after a high task: %d re-checks of the high level, want 3 to 7 (all: %v)", n, got)
	}
	if n := got[low+" no_wait"] + got[low+" wait"]; n != 0 {
		t.Errorf("idle for 5 s: %d pulls of the never used low level, want 0 (all: %v)", n, got)
	}
	if total(got) > 14 {
		t.Errorf("idle for 5 s with a used high level: %d pull requests, want at most 14 (all: %v)", total(got), got)
	}
}

// A task enqueued to a level an idle engine does not wait on ends its long
// poll: with IdlePoll 30 s, a high and a low task start long before the
// long poll would have ended, and a normal task after them, on the
// renewed reply subscription, too. Not a speed claim: without the wake-up
// each would wait for the 30 s long poll.
func TestIdleEngineWokenByEnqueue(t *testing.T) {
	b := setup(t)
	const q = "wake"
	e := newEngine(t, b, pull.Config{Queues: []string{q}, Concurrency: 4, IdlePoll: 30 * time.Second, FetchWait: 30 * time.Second})
	c := countPulls(t, b)
	var s starts
	start(t, e, handlers{"t": s.handler(0)})
	normal := wire.LevelConsumerName(q, forq.PriorityNormal)
	testutil.Eventually(t, 5*time.Second, func() bool { return c.get()[normal+" wait"] > 0 }, "the engine does not long-poll")
	for i, p := range []forq.Priority{forq.PriorityHigh, forq.PriorityLow, forq.PriorityNormal, forq.PriorityHigh} {
		// Idle again, past a hint's notify window: a long poll of the
		// normal level is out (a new one, or the last one, waiting for
		// the rest of its batch).
		time.Sleep(500 * time.Millisecond)
		info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "t"}, producer.WithQueue(q), producer.WithPriority(p))
		if err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, func() bool { _, ok := s.index(info.ID); return ok }, "task %d (%s) enqueued to an idle engine does not start", i, p)
	}
}

// onceRunner gives up the first delivery of each task, with fail, and
// records the start of the second.
type onceRunner struct {
	fail    func(d pull.Delivery)
	mu      sync.Mutex
	seen    map[string]bool
	retried atomic.Int64 // UnixNano of the second start
}

func (r *onceRunner) Deliver(_ context.Context, d pull.Delivery) bool {
	id := d.Msg.Headers().Get("Nats-Msg-Id")
	r.mu.Lock()
	first := !r.seen[id]
	r.seen[id] = true
	r.mu.Unlock()
	if first {
		r.fail(d)
		return false
	}
	r.retried.Store(time.Now().UnixNano())
	_ = d.Msg.Ack()
	return false
}

func (r *onceRunner) Exit() {}

// A high task given back (a nak with a delay) or left unacknowledged (its
// ack wait expires) is redelivered to the idle engine, which picks it up
// by re-checking the high level every IdlePoll: within the delay (or ack
// wait) plus IdlePoll and a few round trips. The bound checked is 4 s
// past that, for a loaded machine; without the re-check the task would
// never start.
func TestIdleEngineTakesRedeliveredHighTask(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after time.Duration // when the task is redelivered
		fail  func(d pull.Delivery)
	}{
		{"nak with delay", 500 * time.Millisecond, func(d pull.Delivery) { _ = d.Msg.NakWithDelay(500 * time.Millisecond) }},
		{"ack wait", time.Second, func(pull.Delivery) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t)
			const q = "redeliver"
			e := newEngine(t, b, pull.Config{Queues: []string{q}, Concurrency: 2, IdlePoll: time.Second, AckWait: time.Second})
			r := &onceRunner{fail: tc.fail, seen: map[string]bool{}}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- e.Run(ctx, func() pull.Runner { return r }) }()
			defer func() { cancel(); <-done }()
			time.Sleep(500 * time.Millisecond) // idle
			at := time.Now()
			enqueueN(t, b, 1, producer.WithQueue(q), producer.WithPriority(forq.PriorityHigh))
			bound := tc.after + time.Second + 4*time.Second
			testutil.Eventually(t, bound, func() bool { return r.retried.Load() != 0 }, "the redelivered high task does not start within %s", bound)
			t.Logf("redelivered high task started %s after its enqueue", time.Unix(0, r.retried.Load()).Sub(at).Round(time.Millisecond))
		})
	}
}

// A high task held by a worker that stops without acknowledging it is
// redelivered after its ack wait to an engine that started after it was
// taken, and so never saw it enqueued: the level, which had a task held
// when the engine declared it, is re-checked.
func TestIdleEngineTakesTaskHeldBeforeItStarted(t *testing.T) {
	b := setup(t)
	const q = "held"
	enqueueN(t, b, 1, producer.WithQueue(q), producer.WithPriority(forq.PriorityHigh))
	// Taken by hand and left unacknowledged.
	e1 := newEngine(t, b, pull.Config{Queues: []string{q}, AckWait: time.Second})
	r1 := &onceRunner{fail: func(pull.Delivery) {}, seen: map[string]bool{}}
	ctx1, cancel1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- e1.Run(ctx1, func() pull.Runner { return r1 }) }()
	testutil.Eventually(t, 5*time.Second, func() bool { r1.mu.Lock(); defer r1.mu.Unlock(); return len(r1.seen) == 1 }, "the first engine does not take the task")
	cancel1()
	<-done1
	var s starts
	e2 := newEngine(t, b, pull.Config{Queues: []string{q}, IdlePoll: time.Second})
	start(t, e2, handlers{"t": s.handler(0)})
	testutil.Eventually(t, 8*time.Second, func() bool { return s.len() == 1 }, "the task held before the engine started does not start on it")
}

// A delayed task of a level the idle engine never used starts when the
// broker's schedule queues it: the broker's own publication of it, or the
// schedule's, is news to the engine as an enqueue is.
func TestIdleEngineTakesDelayedTaskOfUnusedLevel(t *testing.T) {
	b := setup(t)
	const q = "delayed"
	e := newEngine(t, b, pull.Config{Queues: []string{q}, IdlePoll: time.Second})
	var s starts
	start(t, e, handlers{"t": s.handler(0)})
	time.Sleep(500 * time.Millisecond) // idle
	for _, p := range []forq.Priority{forq.PriorityHigh, forq.PriorityLow} {
		enqueueN(t, b, 1, producer.WithQueue(q), producer.WithPriority(p), producer.WithDelay(500*time.Millisecond))
	}
	testutil.Eventually(t, 8*time.Second, func() bool { return s.len() == 2 }, "the delayed tasks of unused levels do not start")
}

// A delayed task whose schedule was stored before the engine started
// starts on it when the schedule fires, though its level never had a task.
func TestIdleEngineTakesDelayedTaskScheduledBeforeItStarted(t *testing.T) {
	b := setup(t)
	const q = "delayedbefore"
	enqueueN(t, b, 1, producer.WithQueue(q), producer.WithPriority(forq.PriorityLow), producer.WithDelay(1500*time.Millisecond))
	e := newEngine(t, b, pull.Config{Queues: []string{q}, IdlePoll: time.Second})
	var s starts
	start(t, e, handlers{"t": s.handler(0)})
	testutil.Eventually(t, 8*time.Second, func() bool { return s.len() == 1 }, "the delayed task scheduled before the engine started does not start")
}
