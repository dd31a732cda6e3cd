package consumer_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
)

// BenchmarkDispatch measures the worker's hot path against a real
// embedded broker: fetch, decode the task's headers, run a no-op handler,
// ack. The queue is filled before the timer starts.
//
// Read concurrency=1 with care: the broker shares this process, and when a
// one-task-at-a-time worker's ack and its next pull request reach it back
// to back, nats-server's file store reloads the message block for nearly
// every ack (seen in a memory profile: indexCacheBuf under ackMsg), about
// 1 ms a task. Across processes (forq bench --concurrency 1) the reload
// does not show and a task costs about 0.2 ms.
func BenchmarkDispatch(b *testing.B) {
	for _, c := range []int{1, 64, 256} {
		b.Run(fmt.Sprintf("concurrency=%d", c), func(b *testing.B) {
			s := testutil.Broker(b)
			nc := testutil.Connect(b, s.ClientURL())
			ctx := b.Context()
			p, err := producer.New(ctx, nc, producer.Config{})
			if err != nil {
				b.Fatal(err)
			}
			tasks := make([]forq.Task, b.N)
			for i := range tasks {
				tasks[i] = forq.Task{Type: "noop", Payload: make([]byte, 64)}
			}
			if _, err := p.EnqueueMany(ctx, tasks); err != nil {
				b.Fatal(err)
			}
			w, err := consumer.New(ctx, testutil.Connect(b, s.ClientURL()), consumer.Config{Concurrency: c, Logger: quiet()})
			if err != nil {
				b.Fatal(err)
			}
			var n atomic.Int64
			done := make(chan struct{})
			w.HandleFunc("noop", func(context.Context, *consumer.Task) ([]byte, error) {
				if n.Add(1) == int64(b.N) {
					close(done)
				}
				return nil, nil
			})
			runCtx, cancel := context.WithCancel(ctx)
			errc := make(chan error, 1)
			b.ReportAllocs()
			b.ResetTimer()
			go func() { errc <- w.Run(runCtx) }()
			select {
			case <-done:
			case <-time.After(5 * time.Minute):
				b.Fatalf("handled %d of %d tasks", n.Load(), b.N)
			}
			b.StopTimer()
			cancel()
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		})
	}
}
