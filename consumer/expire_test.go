package consumer_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// A task received after its deadline is recorded as expired and not run;
// one received before it runs.
func TestExpiredTaskIsNotRun(t *testing.T) {
	b := setup(t)
	w := newWorker(t, b, consumer.Config{Queues: []string{"exp"}})
	var ran atomic.Int64
	w.HandleFunc("x", func(ctx context.Context, task *consumer.Task) ([]byte, error) { ran.Add(1); return []byte("ran"), nil })
	// As a worker that comes late sees it: the deadline has passed but
	// the broker has not dropped it yet (no Nats-TTL here).
	m := nats.NewMsg(wire.TaskSubject("exp"))
	m.Header.Set("Nats-Msg-Id", "late")
	m.Header.Set("Forq-Type", "x")
	m.Header.Set("Forq-Record", "1")
	m.Header.Set("Forq-Deadline", time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano))
	if _, err := b.js.PublishMsg(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	ontime, err := b.p.Enqueue(t.Context(), forq.Task{Type: "x", Queue: "exp"}, producer.WithExpiresIn(time.Minute), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	start(t, w)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	rs, err := b.p.WaitMany(ctx, []string{"late", ontime.ID})
	if err != nil {
		t.Fatal(err)
	}
	if rs[0].State != forq.StateExpired || rs[1].State != forq.StateSucceeded || ran.Load() != 1 {
		t.Errorf("got %s and %s with %d runs, want expired and succeeded with 1 run", rs[0].State, rs[1].State, ran.Load())
	}
	if _, err := b.p.Enqueue(t.Context(), forq.Task{Type: "x"}, producer.WithExpiresIn(-time.Second)); err == nil {
		t.Errorf("a negative expiry was accepted")
	}
}
