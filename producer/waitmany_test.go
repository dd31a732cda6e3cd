package producer_test

import (
	"context"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
)

// WaitMany waits for more tasks than it watches by name (watchFew), some
// finished before it starts and some after, and returns every result. It
// once named every key in one watch, whose request outgrew the broker's
// largest message at about 18,000 tasks.
func TestWaitManyBeyondOneWatch(t *testing.T) {
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	runWorker(t, s.ClientURL(), "q")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tasks := make([]forq.Task, 1000)
	for i := range tasks {
		tasks[i] = forq.Task{Type: "ok", Queue: "q", Record: true}
	}
	infos, err := p.EnqueueMany(ctx, tasks)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(infos))
	for i, in := range infos {
		ids[i] = in.ID
	}
	res, err := p.WaitMany(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r == nil || r.ID != ids[i] || r.State != forq.StateSucceeded {
			t.Fatalf("result %d: %+v, want task %s succeeded", i, r, ids[i])
		}
	}
}
