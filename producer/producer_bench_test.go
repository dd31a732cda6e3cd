package producer

import (
	"testing"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
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
