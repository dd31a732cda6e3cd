package consumer

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
)

// The worker's own cost per task, without the broker's: these benchmarks
// hand the worker deliveries made up beforehand, as its subscription would
// after nats.go has parsed them, and count what the worker does from there
// (decode the headers, run a no-op handler, queue and publish the ack). The
// acks go to a real embedded broker, which drops them: no consumer owns
// their subjects. allocs/op is the figure to watch: it is exact, while
// ns/op moves with the machine.

// benchWorker is a worker as Run sets it up, without the pull loop.
func benchWorker(b *testing.B, concurrency int) *Worker {
	b.Helper()
	s := testutil.Broker(b)
	nc := testutil.Connect(b, s.ClientURL())
	w, err := New(b.Context(), nc, Config{Queues: []string{"bench"}, Concurrency: concurrency, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	w.HandleFunc("bench.noop", func(context.Context, *Task) ([]byte, error) { return nil, nil })
	w.acker = newAcker(nc, w.cfg.AckLinger)
	go w.acker.run()
	b.Cleanup(w.acker.close)
	return w
}

// benchDeliveries makes n deliveries of a default task as the broker
// sends them: forq's two headers, a 64-byte payload, an ack subject.
func benchDeliveries(n int) []*nats.Msg {
	ts := strconv.FormatInt(time.Now().UnixNano(), 10)
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		seq := strconv.Itoa(i + 1)
		msgs[i] = &nats.Msg{
			Subject: forq.LevelSubject("bench", forq.PriorityNormal),
			Reply:   "$JS.ACK.FORQ_TASKS.bench.1." + seq + "." + seq + "." + ts + ".0",
			Header:  nats.Header{forq.HeaderID: {uuid.NewString()}, forq.HeaderType: {"bench.noop"}},
			Data:    make([]byte, 64),
		}
	}
	return msgs
}

// BenchmarkProcess runs tasks one after another on one goroutine: the
// decode, handler call and ack of each.
func BenchmarkProcess(b *testing.B) {
	w := benchWorker(b, 1)
	msgs := benchDeliveries(b.N)
	r := &run{}
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		w.acker.received()
		w.process(ctx, r, "bench", forq.PriorityNormal, 30*time.Second, &taskMsg{m: msgs[i], nc: w.nc, ack: w.acker})
	}
}

// BenchmarkDispatchPath runs tasks as the pull loop hands them over: each
// takes a slot and goes through the dispatcher to a runner, which acks it
// through the acker and frees its slot.
func BenchmarkDispatchPath(b *testing.B) {
	w := benchWorker(b, 256)
	msgs := benchDeliveries(b.N)
	ctx := b.Context()
	d := newDispatcher(w, ctx)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		w.acquire(ctx)
		w.acker.received()
		d.dispatch(job{queue: "bench", prio: forq.PriorityNormal, ackWait: 30 * time.Second, m: &taskMsg{m: msgs[i], nc: w.nc, ack: w.acker}})
	}
	d.mu.Lock()
	runners := d.running
	d.mu.Unlock()
	b.ReportMetric(float64(runners), "runners")
	d.close()
	d.runners.Wait()
}
