package admin_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// A paused queue keeps its tasks; the Inspector counts them and lists
// them with a preview of their payloads.
func Example() {
	dir, err := os.MkdirTemp("", "forq-admin-example")
	if err != nil {
		panic(err)
	}
	defer func() { _ = os.RemoveAll(dir) }()
	srv, err := broker.New(broker.Options{DataDir: dir})
	if err != nil {
		panic(err)
	}
	srv.Start()
	defer srv.Shutdown()
	if err := srv.WaitReady(10 * time.Second); err != nil {
		panic(err)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	ctx := context.Background()
	in, err := admin.New(ctx, nc, admin.Config{})
	if err != nil {
		panic(err)
	}
	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		panic(err)
	}

	// No worker starts a task of a paused queue.
	if _, err := in.Pause(ctx, "emails", admin.PauseForever, 0); err != nil {
		panic(err)
	}
	for _, e := range []struct {
		typ, payload string
		opt          producer.Option
	}{
		{"welcome", `{"to":"ada@example.com","name":"Ada"}`, producer.WithQueue("emails")},
		{"alert", `{"to":"ops@example.com","text":"disk full"}`, producer.WithPriority(forq.PriorityHigh)},
		{"digest", `{"to":"bob@example.com","week":48}`, producer.WithDelay(time.Hour)},
	} {
		task := forq.Task{Type: e.typ, Payload: []byte(e.payload)}
		if _, err := p.Enqueue(ctx, task, producer.WithQueue("emails"), e.opt); err != nil {
			panic(err)
		}
	}

	st, err := in.Stats(ctx, "emails")
	if err != nil {
		panic(err)
	}
	q := st.Queues[0]
	fmt.Printf("queue %s: %d queued (%d high), %d scheduled, paused %v\n", q.Queue, q.Queued, q.QueuedByPriority["high"], q.Scheduled, q.Paused)

	tasks, err := in.Tasks(ctx, "emails", admin.WithPreview(20))
	if err != nil {
		panic(err)
	}
	for _, t := range tasks {
		fmt.Printf("%-9s %-7s %-6s %d bytes: %s…\n", t.State, t.Type, t.Priority, t.Size, t.Preview)
	}
	// Output:
	// queue emails: 2 queued (1 high), 1 scheduled, paused true
	// queued    alert   high   43 bytes: {"to":"ops@example.c…
	// queued    welcome normal 37 bytes: {"to":"ada@example.c…
	// scheduled digest  normal 34 bytes: {"to":"bob@example.c…
}
