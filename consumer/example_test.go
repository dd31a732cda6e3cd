package consumer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/consumer"
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

// wordCount is the handler of "wordcount" tasks: it counts the words of
// the payload's text. A payload that does not decode will never do: the
// error wraps consumer.ErrPermanent, so the task is dead-lettered at once
// instead of retried.
func wordCount(_ context.Context, t *consumer.Task) ([]byte, error) {
	var in struct {
		Text string `json:"text"`
	}
	if err := json.Unmarshal(t.Payload, &in); err != nil {
		return nil, fmt.Errorf("wordcount payload: %w: %w", err, consumer.ErrPermanent)
	}
	return []byte(strconv.Itoa(len(strings.Fields(in.Text)))), nil
}

// A worker serves the queue "words" with a handler per task type until
// its context is canceled; a producer enqueues a task and waits for its
// result. The worker and the producer would usually be separate programs.
func ExampleWorker_Run() {
	nc, stop := embeddedBroker()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	w, err := consumer.New(ctx, nc, consumer.Config{
		Queues:      []string{"words"},
		Concurrency: 4,
		Logger:      slog.New(slog.DiscardHandler), // nil logs to slog.Default()
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	w.HandleFunc("wordcount", wordCount)
	workerCtx, stopWorker := context.WithCancel(ctx)
	defer stopWorker()
	ran := make(chan error, 1)
	go func() { ran <- w.Run(workerCtx) }()

	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	info, err := p.Enqueue(ctx, forq.Task{Type: "wordcount", Payload: []byte(`{"text":"the quick brown fox"}`)},
		producer.WithQueue("words"), producer.WithRecord())
	if err != nil {
		fmt.Println(err)
		return
	}
	r, err := p.Wait(ctx, info.ID)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s after %d attempt: %s words\n", r.State, r.Attempts, r.Result)

	stopWorker() // the worker stops pulling, lets running tasks finish, and Run returns nil
	fmt.Println("Run:", <-ran)
	// Output:
	// succeeded after 1 attempt: 4 words
	// Run: <nil>
}

// A handler's error wrapping ErrPermanent ends the task at once: it is
// dead-lettered after one attempt, whatever its maximum, and its record
// keeps the error.
func ExampleWorker_HandleFunc_permanent() {
	nc, stop := embeddedBroker()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	w, err := consumer.New(ctx, nc, consumer.Config{Queues: []string{"words"}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Println(err)
		return
	}
	w.HandleFunc("wordcount", wordCount)
	workerCtx, stopWorker := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- w.Run(workerCtx) }()
	defer func() { stopWorker(); <-ran }()

	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	info, err := p.Enqueue(ctx, forq.Task{Type: "wordcount", Payload: []byte(`not json`)},
		producer.WithQueue("words"), producer.WithRecord(), producer.WithMaxAttempts(5))
	if err != nil {
		fmt.Println(err)
		return
	}
	r, err := p.Wait(ctx, info.ID)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s after %d attempt: %s\n", r.State, r.Attempts, r.Error)
	// Output:
	// dead after 1 attempt: wordcount payload: invalid character 'o' in literal null (expecting 'u'): permanent failure
}
