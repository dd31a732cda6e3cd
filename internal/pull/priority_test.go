package pull_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// starts records the order in which handlers start.
type starts struct {
	mu  sync.Mutex
	seq []string // "<queue>/<priority>/<id>"
	at  map[string]int
}

func (s *starts) handler(d time.Duration) func(context.Context, pull.Delivery) {
	return func(ctx context.Context, t pull.Delivery) {
		id := t.Msg.Headers().Get("Nats-Msg-Id")
		s.mu.Lock()
		if s.at == nil {
			s.at = map[string]int{}
		}
		s.at[id] = len(s.seq)
		s.seq = append(s.seq, t.Queue+"/"+t.Priority.String()+"/"+id)
		s.mu.Unlock()
		if d > 0 {
			time.Sleep(d)
		}
	}
}

func (s *starts) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seq)
}

func (s *starts) index(id string) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.at[id]
	return i, ok
}

func enqueueN(t *testing.T, b *bundle, n int, opts ...producer.Option) {
	t.Helper()
	tasks := make([]forq.Task, n)
	for i := range tasks {
		tasks[i].Type = "t"
	}
	if _, err := b.p.EnqueueMany(t.Context(), tasks, opts...); err != nil {
		t.Fatal(err)
	}
}

// A flood of low tasks delays a high task by at most one batch: the tasks
// the worker had asked for when it was enqueued (at most Concurrency).
func TestPriorityHighBeforeLowFlood(t *testing.T) {
	b := setup(t)
	const conc = 4
	e := newEngine(t, b, pull.Config{Queues: []string{"prio"}, Concurrency: conc})
	var s starts
	enqueueN(t, b, 3000, producer.WithQueue("prio"), producer.WithPriority(forq.PriorityLow))
	start(t, e, handlers{"t": s.handler(2 * time.Millisecond)})
	testutil.Eventually(t, 10*time.Second, func() bool { return s.len() >= 100 }, "low tasks do not start")
	// A task is enqueued when Enqueue returns: the stream has stored it.
	// Low tasks that start while the call is on its way count for
	// nothing (under -race on a loaded machine one call took as long as
	// 16 low tasks), so the count starts when it returns.
	for range 5 {
		info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "t"}, producer.WithQueue("prio"), producer.WithPriority(forq.PriorityHigh))
		if err != nil {
			t.Fatal(err)
		}
		before := s.len()
		var at int
		testutil.Eventually(t, 5*time.Second, func() bool { var ok bool; at, ok = s.index(info.ID); return ok }, "high task did not start")
		if late := at - before; late > conc {
			t.Errorf("%d low tasks started between the high task's enqueue and its start; want at most %d (one batch)", late, conc)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Normal beats low too.
	info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "t"}, producer.WithQueue("prio"))
	if err != nil {
		t.Fatal(err)
	}
	before := s.len()
	var at int
	testutil.Eventually(t, 5*time.Second, func() bool { var ok bool; at, ok = s.index(info.ID); return ok }, "normal task did not start")
	if late := at - before; late > conc {
		t.Errorf("normal task: %d low tasks started first; want at most %d", late, conc)
	}
}

// All levels queued before the worker starts: they run high, normal, low.
func TestPriorityLevelsInOrder(t *testing.T) {
	b := setup(t)
	e := newEngine(t, b, pull.Config{Queues: []string{"lv"}, Concurrency: 1})
	var s starts
	for _, p := range []forq.Priority{forq.PriorityLow, forq.PriorityNormal, forq.PriorityHigh} {
		enqueueN(t, b, 20, producer.WithQueue("lv"), producer.WithPriority(p))
	}
	start(t, e, handlers{"t": s.handler(0)})
	testutil.Eventually(t, 10*time.Second, func() bool { return s.len() == 60 }, "tasks do not all run")
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.seq {
		want := []string{"high", "normal", "low"}[i/20]
		if got := e[len("lv/"):][:len(want)]; got != want {
			t.Fatalf("start %d is %s, want a %s task; order: %v", i, e, want, s.seq)
		}
	}
}

// Strict order: the first queue's tasks all start before the second's.
func TestQueuesStrictOrder(t *testing.T) {
	b := setup(t)
	e := newEngine(t, b, pull.Config{Queues: []string{"first", "second"}, Concurrency: 1})
	var s starts
	enqueueN(t, b, 50, producer.WithQueue("second"))
	enqueueN(t, b, 50, producer.WithQueue("first"))
	start(t, e, handlers{"t": s.handler(0)})
	testutil.Eventually(t, 10*time.Second, func() bool { return s.len() == 100 }, "tasks do not all run")
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.seq[:50] {
		if e[:len("first/")] != "first/" {
			t.Fatalf("start %d is %s; want the 50 tasks of queue first before any of second", i, e)
		}
	}
}

// Weighted order: both queues progress, 3 to 1.
func TestQueuesWeightedOrder(t *testing.T) {
	b := setup(t)
	e := newEngine(t, b, pull.Config{Queues: []string{"heavy", "light"}, Weights: []int{3, 1}, Concurrency: 2})
	var s starts
	enqueueN(t, b, 400, producer.WithQueue("heavy"))
	enqueueN(t, b, 400, producer.WithQueue("light"))
	start(t, e, handlers{"t": s.handler(time.Millisecond)})
	testutil.Eventually(t, 10*time.Second, func() bool { return s.len() >= 200 }, "tasks do not run")
	s.mu.Lock()
	heavy, light := 0, 0
	for _, e := range s.seq[:200] {
		if e[:len("heavy/")] == "heavy/" {
			heavy++
		} else {
			light++
		}
	}
	s.mu.Unlock()
	if light == 0 || float64(heavy)/float64(light) < 2 || float64(heavy)/float64(light) > 4.5 {
		t.Errorf("first 200 starts: %d heavy, %d light; want about 3 to 1", heavy, light)
	}
	// When heavy runs dry, light gets every slot.
	testutil.Eventually(t, 20*time.Second, func() bool { return s.len() == 800 }, "tasks do not all run: %d of 800", s.len())
}

// An idle worker notices a task of another level within its idle poll,
// and a paused queue does not hold up the worker's other queue.
func TestPriorityIdleAndPaused(t *testing.T) {
	b := setup(t)
	in, err := admin.New(t.Context(), b.nc, admin.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Pause(t.Context(), "held", admin.PauseForever, 0); err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, b, pull.Config{Queues: []string{"held", "idle"}, Concurrency: 2})
	var s starts
	for _, p := range forq.Priorities {
		enqueueN(t, b, 5, producer.WithQueue("held"), producer.WithPriority(p))
	}
	start(t, e, handlers{"t": s.handler(0)})
	time.Sleep(300 * time.Millisecond)
	for _, p := range []forq.Priority{forq.PriorityHigh, forq.PriorityLow, forq.PriorityNormal, forq.PriorityHigh} {
		t0 := time.Now()
		info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "t"}, producer.WithQueue("idle"), producer.WithPriority(p))
		if err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 5*time.Second, func() bool { _, ok := s.index(info.ID); return ok }, "%s task did not start", p)
		if d := time.Since(t0); d > idlePoll+500*time.Millisecond {
			t.Errorf("%s task on an idle worker started after %s; want within about %s", p, d, idlePoll)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := s.len(); n != 4 {
		t.Errorf("%d tasks ran, want the 4 of queue idle (held is paused)", n)
	}
	if err := in.Resume(t.Context(), "held"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return s.len() == 19 }, "after resume: %d tasks ran, want 19", s.len())
}

// A worker draining its normal level does not ask its empty high and low
// levels on every sweep: it watches their subjects and asks again when a
// task is published there, or after the idle poll. Pull requests are
// counted on the broker's API subjects.
func TestEmptyLevelsNotAskedEverySweep(t *testing.T) {
	b := setup(t)
	const n, conc = 3000, 8
	enqueueN(t, b, n, producer.WithQueue("hint"))
	pulls := map[string]*atomic.Int64{}
	for _, p := range forq.Priorities {
		c := new(atomic.Int64)
		pulls[p.String()] = c
		sub, err := b.nc.Subscribe("$JS.API.CONSUMER.MSG.NEXT."+forq.StreamTasks+"."+wire.LevelConsumerName("hint", p), func(*nats.Msg) { c.Add(1) })
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, b, pull.Config{Queues: []string{"hint"}, Concurrency: conc})
	var done atomic.Int64
	t0 := time.Now()
	start(t, e, handlers{"t": func(context.Context, pull.Delivery) { done.Add(1) }})
	testutil.Eventually(t, 60*time.Second, func() bool { return done.Load() == n }, "tasks do not all run")
	elapsed := time.Since(t0)
	normal, high, low := pulls["normal"].Load(), pulls["high"].Load(), pulls["low"].Load()
	// At most conc tasks per pull: at least n/conc normal pulls.
	if normal < n/conc {
		t.Fatalf("%d pulls of the normal level for %d tasks of at most %d each: the spy missed some", normal, n, conc)
	}
	// One pull at the start, then one per idle poll at most.
	limit := int64(elapsed/idlePoll) + 3
	if high > limit || low > limit {
		t.Errorf("in %s, %d normal pulls and %d high, %d low: want at most %d of each empty level", elapsed.Round(time.Millisecond), normal, high, low, limit)
	}
	t.Logf("%s: %d normal pulls, %d high, %d low", elapsed.Round(time.Millisecond), normal, high, low)
}
