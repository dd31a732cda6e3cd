package producer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// WaitMany returns 1,000 results in the order of their IDs, with one KV
// watch for all of them: no polling.
func TestWaitManyInOrderWithOneWatch(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	tasks := make([]forq.Task, 1000)
	for i := range tasks {
		tasks[i] = forq.Task{Type: "square", Payload: fmt.Appendf(nil, "%d", i)}
	}
	infos, err := p.EnqueueMany(t.Context(), tasks, producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	// Wait before any worker runs, so the results arrive during the wait.
	ids := make([]string, len(infos))
	for i, in := range infos {
		ids[i] = in.ID
	}
	type out struct {
		rs  []*forq.Result
		err error
	}
	done := make(chan out, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	go func() { rs, err := p.WaitMany(ctx, ids); done <- out{rs, err} }()

	js, _ := jetstream.New(nc)
	kvStream, err := js.Stream(t.Context(), "KV_"+forq.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	consumers := func() int {
		i, err := kvStream.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return i.State.Consumers
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return consumers() == 1 }, "the waiter's watch never showed up")

	w, err := consumer.New(t.Context(), nc, consumer.Config{Concurrency: 16, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	w.HandleFunc("square", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		var n int
		if _, err := fmt.Sscan(string(task.Payload), &n); err != nil {
			return nil, err
		}
		return fmt.Appendf(nil, "%d", n*n), nil
	})
	wctx, stop := context.WithCancel(context.Background())
	var werr atomic.Value
	wdone := make(chan struct{})
	go func() { defer close(wdone); werr.Store(fmt.Sprint(w.Run(wctx))) }()
	defer func() { stop(); <-wdone }()

	most := 0
	var got out
	for waiting := true; waiting; {
		select {
		case got = <-done:
			waiting = false
		case <-time.After(20 * time.Millisecond):
			most = max(most, consumers())
		}
	}
	if got.err != nil {
		t.Fatal(got.err)
	}
	if most > 1 {
		t.Errorf("the results bucket had %d consumers during the wait, want 1 watch", most)
	}
	for i, r := range got.rs {
		if want := fmt.Sprint(i * i); r == nil || r.ID != ids[i] || string(r.Result) != want || r.State != forq.StateSucceeded {
			t.Fatalf("result %d: got %+v, want task %s succeeded with %s", i, r, ids[i], want)
		}
	}
}

// A batch enqueued while the broker is down fails with ErrNoAck after the
// ack timeout, task by task; enqueued again once the broker is back, the
// same tasks are stored once each, whether or not the first attempt
// reached the broker on reconnect.
func TestEnqueueManyBrokerDownThenRetry(t *testing.T) {
	dir := t.TempDir()
	s := testutil.BrokerIn(t, dir, 0)
	u, err := url.Parse(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	nc := testutil.Connect(t, s.ClientURL())
	p, err := producer.New(t.Context(), nc, producer.Config{AckTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s.Shutdown()
	tasks := make([]forq.Task, 10)
	for i := range tasks {
		tasks[i] = forq.Task{Queue: "retry", Type: "t", Payload: fmt.Appendf(nil, "%d", i)}
	}
	_, err = p.EnqueueMany(t.Context(), tasks)
	var be *producer.BatchError
	if !errors.As(err, &be) {
		t.Fatalf("EnqueueMany with the broker down: %v, want a *BatchError", err)
	}
	for i, e := range be.Errs {
		if !errors.Is(e, producer.ErrNoAck) {
			t.Fatalf("task %d: %v, want ErrNoAck", i, e)
		}
	}

	testutil.BrokerIn(t, dir, port)
	testutil.Eventually(t, 10*time.Second, nc.IsConnected, "producer did not reconnect")
	infos, err := p.EnqueueMany(t.Context(), tasks)
	if err != nil {
		t.Fatal(err)
	}
	for i, in := range infos {
		if in.ID != tasks[i].ID {
			t.Fatalf("task %d enqueued as %s, want its ID %s", i, in.ID, tasks[i].ID)
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	i, err := st.Info(t.Context(), jetstream.WithSubjectFilter(wire.TaskSubject("retry")))
	if err != nil {
		t.Fatal(err)
	}
	if n := i.State.Subjects[wire.TaskSubject("retry")]; n != 10 {
		t.Fatalf("%d tasks stored, want 10 (each once)", n)
	}
}

// Enqueue reuses its messages: 16 goroutines enqueueing at once, with
// different types, options and payloads, each get their own task stored,
// every one of them once, with its own headers and payload.
func TestConcurrentEnqueuesKeepTheirOwnMessage(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	const goroutines, each = 16, 40
	infos := make([][]*producer.Info, goroutines)
	errs := make(chan error, goroutines)
	for g := range goroutines {
		go func() {
			for i := range each {
				var opts []producer.Option
				if i%2 == 1 {
					opts = append(opts, producer.WithMaxAttempts(g+2), producer.WithTimeout(time.Duration(g+1)*time.Second))
				}
				info, err := p.Enqueue(t.Context(), forq.Task{Type: "t" + strconv.Itoa(g), Payload: fmt.Appendf(nil, "%d/%d", g, i)}, opts...)
				if err != nil {
					errs <- err
					return
				}
				infos[g] = append(infos[g], info)
			}
			errs <- nil
		}()
	}
	for range goroutines {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	if i, err := stream.Info(t.Context()); err != nil || i.State.Msgs != goroutines*each {
		t.Fatalf("stream holds %v tasks (err %v), want %d", i.State.Msgs, err, goroutines*each)
	}
	for g := range goroutines {
		for i, info := range infos[g] {
			m, err := stream.GetMsg(t.Context(), info.Sequence)
			if err != nil {
				t.Fatalf("task %d/%d at %d: %v", g, i, info.Sequence, err)
			}
			d := wire.Decode(m.Header, "")
			wantAttempts := forq.DefaultMaxAttempts
			if i%2 == 1 {
				wantAttempts = g + 2
			}
			wantTimeout := time.Duration(0)
			if i%2 == 1 {
				wantTimeout = time.Duration(g+1) * time.Second
			}
			if string(m.Data) != fmt.Sprintf("%d/%d", g, i) || d.ID != info.ID || d.Type != "t"+strconv.Itoa(g) || d.MaxAttempts != wantAttempts || d.Timeout != wantTimeout {
				t.Errorf("task %d/%d at %d: payload %q, ID %s, type %s, attempts %d; want %d/%d, %s, t%d, %d",
					g, i, info.Sequence, m.Data, d.ID, d.Type, d.MaxAttempts, g, i, info.ID, g, wantAttempts)
			}
		}
	}
}
