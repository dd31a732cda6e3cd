package consumer_test

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// runLog counts the runs of tasks by ID and the most that overlapped.
type runLog struct {
	mu      sync.Mutex
	runs    map[string]int
	active  map[string]int
	overlap map[string]int // most runs of the task at once
	ends    map[string]time.Time
}

func newRunLog() *runLog {
	return &runLog{runs: map[string]int{}, active: map[string]int{}, overlap: map[string]int{}, ends: map[string]time.Time{}}
}

func (l *runLog) handler(d time.Duration) consumer.HandlerFunc {
	return func(ctx context.Context, t *consumer.Task) ([]byte, error) {
		l.mu.Lock()
		l.runs[t.ID]++
		l.active[t.ID]++
		l.overlap[t.ID] = max(l.overlap[t.ID], l.active[t.ID])
		l.mu.Unlock()
		defer func() {
			l.mu.Lock()
			l.active[t.ID]--
			l.ends[t.ID] = time.Now()
			l.mu.Unlock()
		}()
		select {
		case <-time.After(d):
			return []byte("ok"), nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

func (l *runLog) get(id string) (runs, overlap int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.runs[id], l.overlap[id]
}

// acks spies on the acknowledgements workers send for queue's tasks, as
// the stock nats CLI could: they are core NATS messages.
type acks struct {
	mu   sync.Mutex
	msgs []*nats.Msg
}

func spyAcks(t *testing.T, nc *nats.Conn, queue string) *acks {
	t.Helper()
	a := &acks{}
	sub, err := nc.Subscribe("$JS.ACK."+forq.StreamTasks+"."+queue+".>", func(m *nats.Msg) {
		a.mu.Lock()
		a.msgs = append(a.msgs, m)
		a.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return a
}

// find returns the first ack whose body starts with body and whose
// delivery count (the token after the consumer) is delivered ("" for any).
func (a *acks) find(body, delivered string) *nats.Msg {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range a.msgs {
		tok := strings.Split(m.Subject, ".")
		if strings.HasPrefix(string(m.Data), body) && (delivered == "" || len(tok) > 4 && tok[4] == delivered) {
			return m
		}
	}
	return nil
}

// count returns how many acks have a body starting with body.
func (a *acks) count(body string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, m := range a.msgs {
		if strings.HasPrefix(string(m.Data), body) {
			n++
		}
	}
	return n
}

// A task redelivered while its first run is alive (here: its delivery
// naked by hand, as the broker does itself when a heartbeat comes late or
// after a restart) is not run a second time: the worker that receives it
// asks, the one running it answers, and the first run's ack, sent on the
// first delivery's reply subject, ends the task.
func TestRedeliveryWhileFirstRunAliveIsNotRun(t *testing.T) {
	for _, tc := range []struct {
		name      string
		workers   int
		perWorker int
	}{
		{"another worker", 2, 1},
		{"same worker", 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t)
			q := "fence" + map[string]string{"another worker": "a", "same worker": "s"}[tc.name]
			const ackWait = time.Second
			log := newRunLog()
			for range tc.workers {
				w := newWorker(t, b, consumer.Config{Queues: []string{q}, AckWait: ackWait, Concurrency: tc.perWorker})
				w.Handle("long", log.handler(3*ackWait))
				start(t, w)
			}
			spy := spyAcks(t, b.nc, q)
			info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "long"}, producer.WithQueue(q))
			if err != nil {
				t.Fatal(err)
			}
			// The first heartbeat names the first delivery's reply subject.
			var beat *nats.Msg
			testutil.Eventually(t, 5*time.Second, func() bool { beat = spy.find("+WPI", "1"); return beat != nil }, "no heartbeat of the first run")
			if err := b.nc.Publish(beat.Subject, []byte("-NAK")); err != nil {
				t.Fatal(err)
			}
			// The redelivery is handed back with a delay, not run.
			testutil.Eventually(t, 5*time.Second, func() bool { return spy.find("-NAK {", "2") != nil }, "the redelivery was not handed back")
			testutil.Eventually(t, 10*time.Second, func() bool {
				return streamMsgs(t, b, wire.TaskSubject(q)) == 0
			}, "the task is still in the stream: the first run's ack on its own delivery did not end it")
			// Long enough for any further redelivery to come and run.
			time.Sleep(3 * ackWait)
			runs, overlap := log.get(info.ID)
			if runs != 1 || overlap != 1 {
				t.Errorf("the task ran %d times, at most %d at once; want once", runs, overlap)
			}
			t.Logf("%s: redelivered while running, ran %d time(s), the first run's ack ended it", tc.name, runs)
		})
	}
}

func streamMsgs(t *testing.T, b *bundle, subject string) uint64 {
	t.Helper()
	s, err := b.js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	i, err := s.Info(t.Context(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range i.State.Subjects {
		n += c
	}
	return n
}

// A redelivered task whose record is final already (a run succeeded but
// its ack never reached the broker) is acked without running again, and
// its record stays succeeded.
func TestRedeliveryOfFinishedTaskKeepsItsRecord(t *testing.T) {
	b := setup(t)
	const q = "finished"
	w := newWorker(t, b, consumer.Config{Queues: []string{q}, AckWait: time.Second})
	log := newRunLog()
	w.Handle("job", log.handler(0))
	// The first delivery goes to a plain JetStream client, which records
	// the task as succeeded and hands it back, as a worker whose ack was
	// lost would leave it.
	info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "job"}, producer.WithQueue(q), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	h, err := topology.Ensure(t.Context(), b.js, topology.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := topology.EnsureConsumer(t.Context(), b.js.Conn(), h.Tasks, q, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var first jetstream.Msg
	for m := range batch.Messages() {
		first = m
	}
	if first == nil {
		t.Fatal("no first delivery")
	}
	kv, err := b.js.KeyValue(t.Context(), forq.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	done, _ := json.Marshal(forq.Result{ID: info.ID, Queue: q, Type: "job", State: forq.StateSucceeded, Result: []byte("first")})
	if _, err := kv.Put(t.Context(), info.ID, done); err != nil {
		t.Fatal(err)
	}
	var states []forq.State
	var mu sync.Mutex
	watch, err := kv.Watch(t.Context(), info.ID, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = watch.Stop() }()
	go func() {
		for e := range watch.Updates() {
			if e == nil {
				continue
			}
			var r forq.Result
			_ = json.Unmarshal(e.Value(), &r)
			mu.Lock()
			states = append(states, r.State)
			mu.Unlock()
		}
	}()
	if err := first.Nak(); err != nil {
		t.Fatal(err)
	}
	start(t, w)
	testutil.Eventually(t, 10*time.Second, func() bool { return streamMsgs(t, b, wire.TaskSubject(q)) == 0 }, "the redelivered task was never settled")
	time.Sleep(500 * time.Millisecond)
	r, err := b.p.Result(t.Context(), info.ID)
	if err != nil {
		t.Fatal(err)
	}
	runs, _ := log.get(info.ID)
	mu.Lock()
	defer mu.Unlock()
	if runs != 0 || r.State != forq.StateSucceeded || string(r.Result) != "first" || len(states) != 0 {
		t.Errorf("ran %d times, record %s %q, record writes after it succeeded %v; want no run, the first run's record, no write", runs, r.State, r.Result, states)
	}
	t.Logf("redelivery of a succeeded task: %d runs, record %s %q, %d writes after it", runs, r.State, r.Result, len(states))
}

// restartable is an embedded broker that a test stops and starts again on
// its data directory and port.
type restartable struct {
	t    *testing.T
	dir  string
	port int
	s    *broker.Server
}

func newRestartable(t *testing.T) *restartable {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r := &restartable{t: t, dir: t.TempDir(), port: port}
	r.start()
	t.Cleanup(func() { r.s.Shutdown() })
	return r
}

func (r *restartable) start() {
	r.t.Helper()
	s, err := broker.New(broker.Options{DataDir: r.dir, Port: r.port})
	if err != nil {
		r.t.Fatal(err)
	}
	s.Start()
	if err := s.WaitReady(10 * time.Second); err != nil {
		r.t.Fatal(err)
	}
	r.s = s
}

// restart stops the broker gracefully, keeps it down for down, and starts
// it again.
func (r *restartable) restart(down time.Duration) {
	r.t.Helper()
	r.s.Shutdown()
	time.Sleep(down)
	r.start()
}

func bundleOn(t *testing.T, url string) *bundle {
	t.Helper()
	nc := testutil.Connect(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{nc: nc, js: js, p: p, url: url}
}

// Tasks running when the broker restarts, published longer than the ack
// wait ago and not yet heartbeated (the case the broker redelivers at once
// after a restart), run once each; every waiter sees its task's success
// when it ends; no record moves back from succeeded.
func TestBrokerRestartDuringLongTasksRunsEachOnce(t *testing.T) {
	br := newRestartable(t)
	b := bundleOn(t, br.s.ClientURL())
	// The broker is down for less than the ack wait, as a restart is: a
	// longer outage loses the first runs' leases (lease.go), which cancels
	// them rather than let a second run overlap.
	const q, n, ackWait, down = "restart", 6, 2 * time.Second, 300 * time.Millisecond
	log := newRunLog()
	// Enqueued, then older than the ack wait before any worker starts.
	ids := make([]string, n)
	for i := range ids {
		info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "long"}, producer.WithQueue(q), producer.WithRecord())
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = info.ID
	}
	// Two workers on connections of their own, each with more slots than
	// tasks: a task the broker redelivers finds a free slot at once, in
	// the process that runs it or in the other one.
	var workers []*consumer.Worker
	for range 2 {
		wnc := testutil.Connect(t, br.s.ClientURL())
		w, err := consumer.New(t.Context(), wnc, consumer.Config{Queues: []string{q}, AckWait: ackWait, Concurrency: 2 * n, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		w.Handle("long", log.handler(4*ackWait))
		workers = append(workers, w)
	}
	time.Sleep(ackWait + 500*time.Millisecond)
	type seen struct {
		at    time.Time
		state forq.State
		err   error
	}
	waits := make([]seen, n)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r, err := b.p.Wait(ctx, id)
			waits[i] = seen{at: time.Now(), err: err}
			if r != nil {
				waits[i].state = r.State
			}
		})
	}
	spy := spyAcks(t, b.nc, q)
	for _, w := range workers {
		start(t, w)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, id := range ids {
			if r, _ := log.get(id); r == 0 {
				return false
			}
		}
		return true
	}, "the tasks never all started")
	// Before the first heartbeat (a third of the ack wait into the runs).
	br.restart(down)
	wg.Wait()
	time.Sleep(2 * ackWait) // room for a late second run or record write
	t.Logf("redeliveries handed back because their first run was alive: %d", spy.count("-NAK {"))
	for i, id := range ids {
		runs, overlap := log.get(id)
		log.mu.Lock()
		end := log.ends[id]
		log.mu.Unlock()
		r, err := b.p.Result(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		late := waits[i].at.Sub(end)
		if runs != 1 || overlap != 1 || waits[i].err != nil || waits[i].state != forq.StateSucceeded || r.State != forq.StateSucceeded || late > 2*time.Second {
			t.Errorf("task %d: %d runs (%d at once), waiter got %s %v %s after the run ended, record now %s; want 1 run, succeeded at once, record succeeded",
				i, runs, overlap, waits[i].state, waits[i].err, late.Round(time.Millisecond), r.State)
		} else {
			t.Logf("task %d: 1 run, waiter saw succeeded %s after it ended", i, late.Round(time.Millisecond))
		}
	}
}

// A task handed back by a stopping worker just before the broker restarts
// runs at once after the restart, not after the ack wait.
func TestHandedBackTaskRunsAtOnceAfterBrokerRestart(t *testing.T) {
	br := newRestartable(t)
	b := bundleOn(t, br.s.ClientURL())
	const q, ackWait = "handback", 20 * time.Second
	info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "long"}, producer.WithQueue(q))
	if err != nil {
		t.Fatal(err)
	}
	log := newRunLog()
	first := newWorker(t, b, consumer.Config{Queues: []string{q}, AckWait: ackWait, Grace: 10 * time.Millisecond})
	first.Handle("long", log.handler(time.Minute))
	stop := start(t, first)
	testutil.Eventually(t, 5*time.Second, func() bool { r, _ := log.get(info.ID); return r == 1 }, "the task never started")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	br.restart(0)
	ready := time.Now()
	second := newWorker(t, b, consumer.Config{Queues: []string{q}, AckWait: ackWait})
	var again atomic.Int64
	second.HandleFunc("long", func(ctx context.Context, _ *consumer.Task) ([]byte, error) {
		again.CompareAndSwap(0, time.Now().UnixNano())
		return nil, nil
	})
	start(t, second)
	testutil.Eventually(t, 30*time.Second, func() bool { return again.Load() != 0 }, "the handed-back task never ran again")
	after := time.Unix(0, again.Load()).Sub(ready)
	if after > 5*time.Second {
		t.Errorf("the handed-back task ran again %s after the broker was ready; want within 5s (the ack wait is %s)", after.Round(time.Millisecond), ackWait)
	}
	t.Logf("handed back before the restart, ran again %s after the broker was ready (ack wait %s)", after.Round(time.Millisecond), ackWait)
}
