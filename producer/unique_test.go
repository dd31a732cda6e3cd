package producer_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go/jetstream"
)

// 50 concurrent enqueues with one unique key make one task, and all get
// its ID.
func TestUniqueConcurrentEnqueues(t *testing.T) {
	s := testutil.Broker(t)
	ctx := t.Context()
	var ps []*producer.Producer
	for range 5 { // several connections, as several processes would have
		p, err := producer.New(ctx, testutil.Connect(t, s.ClientURL()), producer.Config{})
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	ids := make([]string, 50)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			info, err := ps[i%len(ps)].Enqueue(ctx, forq.Task{Type: "x"}, producer.WithUnique("report:2026-05"))
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = info.ID
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] || id == "" {
			t.Fatalf("IDs differ: %v", ids)
		}
	}
	js, _ := jetstream.New(testutil.Connect(t, s.ClientURL()))
	st, err := js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("%d tasks in %s, want 1", info.State.Msgs, forq.StreamTasks)
	}

	// In one batch too.
	tasks := make([]forq.Task, 5)
	for i := range tasks {
		tasks[i] = forq.Task{Type: "x", UniqueKey: "batch"}
	}
	infos, err := ps[0].EnqueueMany(ctx, tasks)
	if err != nil {
		t.Fatal(err)
	}
	for i, in := range infos {
		if in.ID != infos[0].ID || in.Duplicate != (i > 0) {
			t.Fatalf("batch infos %+v", infos)
		}
	}
	if _, err := ps[0].Enqueue(ctx, forq.Task{Type: "x"}, producer.WithUnique("")); !errors.Is(err, forq.ErrInvalidOption) {
		t.Fatalf("empty unique key: %v", err)
	}
}
