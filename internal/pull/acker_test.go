package pull_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// ackState reads the queue's consumer: tasks delivered and not acked, and
// tasks not delivered yet. Until an engine declares the consumer, every
// task counts as not delivered.
func ackState(t *testing.T, b *bundle, queue string) (ackPending, pending uint64) {
	t.Helper()
	c, err := b.js.Consumer(t.Context(), forq.StreamTasks, wire.ConsumerName(queue))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, 1
	}
	if err != nil {
		t.Fatal(err)
	}
	i, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return uint64(i.NumAckPending), i.NumPending
}

func waitAcked(t *testing.T, b *bundle, queue string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ap, p := ackState(t, b, queue)
		if ap == 0 && p == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %d tasks delivered and not acked, %d not delivered", ap, p)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An engine with nothing else running acks a task at once, however long
// its acks may linger while it is busy.
func TestIdleWorkerAcksAtOnce(t *testing.T) {
	b := setup(t)
	e := newEngine(t, b, pull.Config{Queues: []string{"acks"}, AckLinger: time.Hour})
	start(t, e, handlers{})
	for range 3 {
		if _, err := b.p.Enqueue(t.Context(), forq.Task{Queue: "acks", Type: "t"}); err != nil {
			t.Fatal(err)
		}
		waitAcked(t, b, "acks")
	}
}

// While other tasks run, a finished task's ack waits for theirs; when the
// last one ends they all go, without waiting out the linger.
func TestAcksGatherWhileBusy(t *testing.T) {
	b := setup(t)
	e := newEngine(t, b, pull.Config{Queues: []string{"acks"}, Concurrency: 2, AckLinger: time.Hour})
	release := make(chan struct{})
	slowStarted, fastDone := make(chan struct{}), make(chan struct{})
	h := handlers{
		"slow": func(ctx context.Context, _ pull.Delivery) {
			close(slowStarted)
			select {
			case <-release:
			case <-ctx.Done():
			}
		},
		"fast": func(context.Context, pull.Delivery) {
			<-slowStarted
			close(fastDone)
		},
	}
	if _, err := b.p.EnqueueMany(t.Context(), []forq.Task{{Queue: "acks", Type: "slow"}, {Queue: "acks", Type: "fast"}}); err != nil {
		t.Fatal(err)
	}
	start(t, e, h)
	<-fastDone
	// The fast task is done; its ack is held for the slow one's.
	time.Sleep(300 * time.Millisecond)
	if ap, _ := ackState(t, b, "acks"); ap != 2 {
		t.Fatalf("%d tasks awaiting their ack while the slow task runs; want 2 (the fast one's ack held)", ap)
	}
	close(release)
	waitAcked(t, b, "acks")
}

// An engine that stops publishes the acks it holds before Run returns: no
// task is redelivered.
func TestStopPublishesHeldAcks(t *testing.T) {
	b := setup(t)
	e := newEngine(t, b, pull.Config{Queues: []string{"acks"}, Concurrency: 2, AckLinger: time.Hour})
	slowStarted, fastDone := make(chan struct{}), make(chan struct{})
	h := handlers{
		"slow": func(context.Context, pull.Delivery) {
			close(slowStarted)
			time.Sleep(200 * time.Millisecond) // ends while Run waits for it
		},
		"fast": func(context.Context, pull.Delivery) {
			<-slowStarted
			close(fastDone)
		},
	}
	if _, err := b.p.EnqueueMany(t.Context(), []forq.Task{{Queue: "acks", Type: "slow"}, {Queue: "acks", Type: "fast"}}); err != nil {
		t.Fatal(err)
	}
	stop := start(t, e, h)
	<-fastDone
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, b, "acks")
	s, err := b.js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetLastMsgForSubject(t.Context(), wire.TaskSubject("acks")); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a task of the queue is still stored after the stop (err %v)", err)
	}
}
