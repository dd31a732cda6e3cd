package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/forqhq/forq/consumer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// WorkerOptions configure one worker process of a run.
type WorkerOptions struct {
	// Mode is ModeForq or ModeBaseline.
	Mode string
	// Concurrency is the forq worker's Config.Concurrency, and the
	// baseline worker's fetch batch.
	Concurrency int
	// Queue is the queue the worker serves; "" is the main one (Queue,
	// or the baseline's BaselineConsumer).
	Queue string
	// IdlePoll and StatusInterval are the forq worker's Config fields
	// (0: their defaults), to measure what an idle worker costs.
	IdlePoll, StatusInterval time.Duration
	// Log gets the forq worker's events.
	Log *slog.Logger
}

// RunWorker runs a no-op worker on nc until ctx is canceled. The handler
// reports the start of each latency probe on ReportSubject.
func RunWorker(ctx context.Context, nc *nats.Conn, o WorkerOptions) error {
	switch o.Mode {
	case ModeForq:
		return forqWorker(ctx, nc, o)
	case ModeBaseline:
		return baselineWorker(ctx, nc, o)
	}
	return fmt.Errorf("bench: unknown mode %q", o.Mode)
}

func forqWorker(ctx context.Context, nc *nats.Conn, o WorkerOptions) error {
	q := o.Queue
	if q == "" {
		q = Queue
	}
	w, err := consumer.New(ctx, nc, consumer.Config{
		Queues: []string{q}, Concurrency: o.Concurrency, Logger: o.Log,
		IdlePoll: o.IdlePoll, StatusInterval: o.StatusInterval,
	})
	if err != nil {
		return err
	}
	w.HandleFunc(TaskType, func(_ context.Context, t *consumer.Task) ([]byte, error) {
		start := time.Now()
		if p := Probe(t.Payload); p != 0 {
			_ = nc.Publish(ReportSubject, report(p, start))
		}
		return nil, nil
	})
	return w.Run(ctx)
}

// baselineWorker is what a worker on plain JetStream does at the least:
// fetch a batch, run each task, ack it.
func baselineWorker(ctx context.Context, nc *nats.Conn, o WorkerOptions) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	name, _ := baselineQueue(o.Queue)
	c, err := js.Consumer(ctx, BaselineStream, name)
	if err != nil {
		return fmt.Errorf("baseline consumer: %w", err)
	}
	var results jetstream.KeyValue
	for ctx.Err() == nil {
		batch, err := c.Fetch(o.Concurrency, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if errors.Is(err, context.Canceled) {
				break
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for m := range batch.Messages() {
			start := time.Now()
			if p := Probe(m.Data()); p != 0 {
				_ = nc.Publish(ReportSubject, report(p, start))
			}
			if key := m.Headers().Get(ResultHeader); key != "" {
				if err := putResult(ctx, js, &results, key); err != nil {
					_ = m.Nak()
					continue
				}
			}
			_ = m.Ack()
		}
	}
	return nil
}

// putResult puts a baseline task's result under key in BaselineResults,
// opening the bucket into *kv the first time.
func putResult(ctx context.Context, js jetstream.JetStream, kv *jetstream.KeyValue, key string) error {
	if *kv == nil {
		b, err := js.KeyValue(ctx, BaselineResults)
		if err != nil {
			return err
		}
		*kv = b
	}
	_, err := (*kv).Put(ctx, key, nil)
	return err
}
