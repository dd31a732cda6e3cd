package producer_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
)

// A recorded task with no delay and no deadline has no record while it
// is queued (Result says so; Wait and WaitMany wait, and get it once a
// worker runs it); one with a delay or a deadline is recorded as queued
// as it is enqueued. A Cancel of one no worker saw records it canceled.
func TestQueuedRecordedTask(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	ctx := t.Context()
	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := p.Enqueue(ctx, forq.Task{Type: "ok"}, producer.WithQueue("qr"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	if r, err := p.Result(ctx, plain.ID); !errors.Is(err, forq.ErrResultNotFound) {
		t.Errorf("queued task: got %+v, %v; want no record yet", r, err)
	}
	many, err := p.EnqueueMany(ctx, []forq.Task{{Type: "ok"}, {Type: "ok"}}, producer.WithQueue("qr"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range many {
		if r, err := p.Result(ctx, in.ID); !errors.Is(err, forq.ErrResultNotFound) {
			t.Errorf("queued task of EnqueueMany: got %+v, %v; want no record yet", r, err)
		}
	}
	for name, o := range map[string]producer.Option{
		"a deadline": producer.WithExpiresIn(time.Hour),
		"a delay":    producer.WithDelay(time.Hour),
	} {
		in, err := p.Enqueue(ctx, forq.Task{Type: "ok"}, producer.WithQueue("qr"), producer.WithRecord(), o)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := p.Result(ctx, in.ID); err != nil || r.State != forq.StateQueued || r.Queue != "qr" {
			t.Errorf("task with %s: got %+v, %v; want a queued record", name, r, err)
		}
	}
	canceled, err := p.Enqueue(ctx, forq.Task{Type: "ok"}, producer.WithQueue("qr"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cancel(ctx, canceled.ID); err != nil {
		t.Fatal(err)
	}
	if r, err := p.Result(ctx, canceled.ID); err != nil || r.State != forq.StateCanceled {
		t.Errorf("canceled before any worker saw it: got %+v, %v; want canceled", r, err)
	}
	// A waiter started before any worker gets the results once one runs
	// the tasks.
	ids := []string{plain.ID, many[0].ID, many[1].ID, canceled.ID}
	type waited struct {
		rs  []*forq.Result
		err error
	}
	got := make(chan waited, 1)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	go func() {
		rs, err := p.WaitMany(wctx, ids)
		got <- waited{rs, err}
	}()
	time.Sleep(200 * time.Millisecond)
	runWorker(t, s.ClientURL(), "qr")
	w := <-got
	if w.err != nil {
		t.Fatal(w.err)
	}
	for i, want := range []forq.State{forq.StateSucceeded, forq.StateSucceeded, forq.StateSucceeded, forq.StateCanceled} {
		if w.rs[i].State != want {
			t.Errorf("%s: %s, want %s", ids[i], w.rs[i].State, want)
		}
	}
	r, err := p.Wait(wctx, plain.ID)
	if err != nil || r.State != forq.StateSucceeded {
		t.Errorf("wait: %+v, %v", r, err)
	}
}
