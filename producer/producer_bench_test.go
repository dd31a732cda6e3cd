package producer

import (
	"context"
	"runtime"
	"testing"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func benchProducer(b *testing.B) *Producer {
	b.Helper()
	s := testutil.Broker(b)
	nc := testutil.Connect(b, s.ClientURL())
	p, err := New(b.Context(), nc, Config{})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkPrepare measures encoding a task into its message: validation,
// a new ID, headers and the size check.
func BenchmarkPrepare(b *testing.B) {
	p := benchProducer(b)
	payload := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		t := forq.Task{Type: "noop", Payload: payload}
		if _, err := p.prepare(b.Context(), &t, collect(nil)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnqueue measures one synchronous enqueue on a real embedded
// broker: a publish and the wait for the stream's ack.
func BenchmarkEnqueue(b *testing.B) {
	p := benchProducer(b)
	payload := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Enqueue(b.Context(), forq.Task{Type: "noop", Payload: payload}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnqueueMany measures batched enqueue: b.N tasks in one call,
// published asynchronously within the window.
func BenchmarkEnqueueMany(b *testing.B) {
	p := benchProducer(b)
	tasks := make([]forq.Task, b.N)
	for i := range tasks {
		tasks[i] = forq.Task{Type: "noop", Payload: make([]byte, 64)}
	}
	b.ReportAllocs()
	b.ResetTimer()
	if _, err := p.EnqueueMany(b.Context(), tasks); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRoundTrip splits the cost of one synchronous enqueue on a real
// embedded broker (docs/bench.md, "One task at a time"): forq's Enqueue;
// the same message (wire.Msg, forq's headers) published with a plain
// JetStream PublishMsg to forq's stream, which leaves out forq's client
// code; forq's headers on a plain work-queue stream, which leaves out the
// stream's settings too; and a message without headers there, which
// leaves out the de-duplication and the headers. "par16-" runs 16
// goroutines at once, each one enqueue at a time.
func BenchmarkRoundTrip(b *testing.B) {
	p := benchProducer(b)
	js, err := jetstream.New(p.nc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := js.CreateStream(b.Context(), jetstream.StreamConfig{
		Name: "PLAIN", Subjects: []string{"plain"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Duplicates: forq.DefaultDuplicateWindow,
	}); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 64)
	forqMsg := func(subject string) *nats.Msg {
		m := wire.NewMsg()
		m.Encode(&forq.Task{ID: forq.NewID(), Queue: forq.DefaultQueue, Type: "noop", MaxAttempts: forq.DefaultMaxAttempts, Payload: payload})
		if subject != "" {
			m.Subject = subject
		}
		return &m.Msg
	}
	cases := []struct {
		name string
		one  func(ctx context.Context) error
	}{
		{"forq", func(ctx context.Context) error {
			_, err := p.Enqueue(ctx, forq.Task{Type: "noop", Payload: payload})
			return err
		}},
		{"js-forq-stream", func(ctx context.Context) error {
			_, err := js.PublishMsg(ctx, forqMsg(""))
			return err
		}},
		{"js-headers", func(ctx context.Context) error {
			_, err := js.PublishMsg(ctx, forqMsg("plain"))
			return err
		}},
		{"js", func(ctx context.Context) error {
			_, err := js.PublishMsg(ctx, &nats.Msg{Subject: "plain", Data: payload})
			return err
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			defer cpuPerOp(b)()
			for b.Loop() {
				if err := c.one(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("par16-"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
			defer cpuPerOp(b)()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := c.one(b.Context()); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
