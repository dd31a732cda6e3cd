package consumer

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/record"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// A delivery that waited for a runner past its ack wait (a starved
// process: the engine received it, no runner got to it in time) is not
// run: the broker has redelivered it. It costs the task no attempt, and
// its redelivery is not taken for a lost run: it runs once, not alone, at
// attempt 1.
func TestStaleDeliveryIsNotRunNorAnAttempt(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	w, err := New(t.Context(), nc, Config{Queues: []string{"other"}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	w.HandleFunc("job", func(context.Context, *Task) ([]byte, error) {
		calls.Add(1)
		return []byte("done"), nil
	})
	ctx, stop := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	t.Cleanup(func() { stop(); <-errc })
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// The worker runs (its engine is set) once it ran a task of its own.
	if _, err := p.Enqueue(t.Context(), forq.Task{Type: "job"}, producer.WithQueue("other")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return calls.Load() == 1 }, "the worker did not start")

	// Queue "stale": its deliveries are pulled by hand and given to the
	// worker's delivery path as its engine would.
	const ackWait = time.Second
	if _, err := topology.EnsureConsumer(t.Context(), nc, w.h.Tasks, "stale", ackWait); err != nil {
		t.Fatal(err)
	}
	info, err := p.Enqueue(t.Context(), forq.Task{Type: "job", ID: "stale-1"}, producer.WithQueue("stale"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	a := pull.NewAcker(nc, 0)
	var acker sync.WaitGroup
	acker.Go(a.Run)
	t.Cleanup(func() { a.Close(); acker.Wait() })
	r := &runner{w: w}
	first := pullOne(t, nc, "stale")
	received := time.Now()
	time.Sleep(ackWait + ackWait/2) // no runner came for it
	before := w.processed.Load()
	r.Deliver(t.Context(), pull.Delivery{Queue: "stale", Priority: forq.PriorityNormal, AckWait: ackWait, Msg: a.Msg(first), Received: received})
	if n := calls.Load(); n != 1 {
		t.Fatalf("the handler ran %d time(s) for a delivery past its lease, want 0", n-1)
	}
	if n := w.processed.Load(); n != before {
		t.Errorf("Processed went from %d to %d for a delivery that did not run", before, n)
	}
	rec := readRecord(t, w, info.ID)
	if rec.State != forq.StateQueued || rec.Run != 1 || rec.Alone || rec.Failures != 0 {
		t.Errorf("record after the stale delivery: %s run %d alone %v failures %d, want queued, run 1 ended, no failure", rec.State, rec.Run, rec.Alone, rec.Failures)
	}

	second := pullOne(t, nc, "stale") // the broker's redelivery
	if a, _ := wire.ParseAck(second.Reply); a.Delivered != 2 {
		t.Fatalf("got delivery %d, want the redelivery (2)", a.Delivered)
	}
	r.Deliver(t.Context(), pull.Delivery{Queue: "stale", Priority: forq.PriorityNormal, AckWait: ackWait, Msg: a.Msg(second), Received: time.Now()})
	if n := calls.Load(); n != 2 {
		t.Fatalf("the handler ran %d time(s) for the redelivery, want 1", n-1)
	}
	rec = readRecord(t, w, info.ID)
	if rec.State != forq.StateSucceeded || rec.Attempts != 1 || rec.Alone || rec.Run != 2 {
		t.Errorf("record after the redelivery: %s at attempt %d, run %d, alone %v; want succeeded at attempt 1 on run 2, not alone (not a suspect)",
			rec.State, rec.Attempts, rec.Run, rec.Alone)
	}
}

// pullOne pulls the next delivery of queue's normal level by hand.
func pullOne(t *testing.T, nc *nats.Conn, queue string) *nats.Msg {
	t.Helper()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	subject := "$JS.API.CONSUMER.MSG.NEXT." + forq.StreamTasks + "." + wire.LevelConsumerName(queue, forq.PriorityNormal)
	if err := nc.PublishRequest(subject, inbox, []byte(`{"batch":1,"expires":5000000000}`)); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil || m.Reply == "" {
		t.Fatalf("no delivery: %v %v", err, m)
	}
	return m
}

// readRecord reads task id's record.
func readRecord(t *testing.T, w *Worker, id string) *forq.Result {
	t.Helper()
	rec, _, err := record.New(w.h.Results).Get(t.Context(), id)
	if err != nil || rec == nil {
		t.Fatalf("record of %s: %v %v", id, rec, err)
	}
	return rec
}

// A run alone whose record names this worker, since it started, is no
// crash: this process is alive. The same PID and name before this worker
// started (a restarted process given the same PID) is another process.
func TestRanAloneHere(t *testing.T) {
	started := time.Now().UTC()
	w := &Worker{pid: 7, name: "h", started: started}
	for _, tc := range []struct {
		rec  forq.Result
		want bool
	}{
		{forq.Result{WorkerPID: 7, Host: "h", StartedAt: started.Add(time.Second)}, true},
		{forq.Result{WorkerPID: 7, Host: "h", StartedAt: started.Add(-time.Second)}, false},
		{forq.Result{WorkerPID: 8, Host: "h", StartedAt: started.Add(time.Second)}, false},
		{forq.Result{WorkerPID: 7, Host: "g", StartedAt: started.Add(time.Second)}, false},
	} {
		if got := w.ranAloneHere(&tc.rec); got != tc.want {
			t.Errorf("ranAloneHere(pid %d host %s started %s after the worker) = %v, want %v",
				tc.rec.WorkerPID, tc.rec.Host, tc.rec.StartedAt.Sub(started), got, tc.want)
		}
	}
}
