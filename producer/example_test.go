package producer_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// embeddedBroker starts a broker inside this process, with its data in a
// temporary directory, and connects to it; stop closes the connection,
// stops the broker and removes its data. A program connects to a running
// broker instead: nats.Connect(forq.DefaultURL).
func embeddedBroker() (nc *nats.Conn, stop func()) {
	dir, err := os.MkdirTemp("", "forq-example-")
	if err != nil {
		panic(err)
	}
	b, err := broker.New(broker.Options{DataDir: dir})
	if err != nil {
		panic(err)
	}
	b.Start()
	if err := b.WaitReady(10 * time.Second); err != nil {
		panic(err)
	}
	if nc, err = nats.Connect(b.ClientURL()); err != nil {
		panic(err)
	}
	return nc, func() {
		nc.Close()
		b.Shutdown()
		_ = os.RemoveAll(dir)
	}
}

// A task enqueued with an ID of its own is stored once: enqueueing it again
// within the broker's duplicate window (2 minutes) is reported as a
// duplicate and stores nothing. With WithRecord the task has a record from
// the start, which Result reads and Wait watches.
func ExampleProducer_Enqueue() {
	nc, stop := embeddedBroker()
	defer stop()
	ctx := context.Background()

	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	task := forq.Task{Type: "resize", Payload: []byte(`{"image":"cat.png","width":200}`)}
	for range 2 {
		info, err := p.Enqueue(ctx, task,
			producer.WithQueue("images"), producer.WithID("resize-cat-200"),
			producer.WithRecord(), producer.WithMaxAttempts(3))
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println("enqueued", info.ID, "duplicate:", info.Duplicate)
	}
	// No worker has started it: its record is made when one does.
	r, err := p.Result(ctx, "resize-cat-200")
	switch {
	case errors.Is(err, forq.ErrResultNotFound):
		fmt.Println("no record yet")
	case err != nil:
		fmt.Println(err)
	default:
		fmt.Println("state:", r.State)
	}
	// Output:
	// enqueued resize-cat-200 duplicate: false
	// enqueued resize-cat-200 duplicate: true
	// no record yet
}

// Bad input is refused before anything is sent, with an error that names
// the problem and wraps a sentinel to branch on.
func ExampleProducer_Enqueue_invalid() {
	nc, stop := embeddedBroker()
	defer stop()
	ctx := context.Background()

	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	_, err = p.Enqueue(ctx, forq.Task{Type: "resize"}, producer.WithQueue("my images"))
	fmt.Println(err)
	fmt.Println("invalid queue:", errors.Is(err, forq.ErrInvalidQueue))
	// Output:
	// invalid queue name: "my images" has ' '; use ASCII letters, digits, '-' and '_'
	// invalid queue: true
}
