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
// fetch a batch, run each task, ack it. A task that names a result key
// (ResultHeader) has its result put in BaselineResults first: the batch's
// puts are published at once, and each task acked when its put is.
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
	type put struct {
		m jetstream.Msg
		f jetstream.PubAckFuture
	}
	var puts []put
	for ctx.Err() == nil {
		batch, err := c.Fetch(o.Concurrency, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if errors.Is(err, context.Canceled) {
				break
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		puts = puts[:0]
		for m := range batch.Messages() {
			start := time.Now()
			if p := Probe(m.Data()); p != 0 {
				_ = nc.Publish(ReportSubject, report(p, start))
			}
			if key := m.Headers().Get(ResultHeader); key != "" {
				f, err := js.PublishAsync("$KV."+BaselineResults+"."+key, nil)
				if err != nil {
					_ = m.Nak()
					continue
				}
				puts = append(puts, put{m, f})
				continue
			}
			_ = m.Ack()
		}
		for _, p := range puts {
			select {
			case <-p.f.Ok():
				_ = p.m.Ack()
			case <-p.f.Err():
				_ = p.m.Nak()
			case <-ctx.Done():
				return nil
			}
		}
	}
	return nil
}
