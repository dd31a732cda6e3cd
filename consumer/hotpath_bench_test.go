package consumer

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/wire"
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

// benchWorker is a worker as Run sets it up, without its pull engine:
// deliveries come through an acker of their own.
func benchWorker(b *testing.B, concurrency int) (*Worker, *pull.Acker) {
	b.Helper()
	s := testutil.Broker(b)
	nc := testutil.Connect(b, s.ClientURL())
	w, err := New(b.Context(), nc, Config{Queues: []string{"bench"}, Concurrency: concurrency, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	w.HandleFunc("bench.noop", func(context.Context, *Task) ([]byte, error) { return nil, nil })
	a := pull.NewAcker(nc, w.cfg.AckLinger)
	var acker sync.WaitGroup
	acker.Go(a.Run)
	b.Cleanup(func() { a.Close(); acker.Wait() })
	return w, a
}

// benchDeliveries makes n deliveries of a default task as the broker
// sends them: forq's two headers, a 64-byte payload, an ack subject.
func benchDeliveries(n int) []*nats.Msg {
	ts := strconv.FormatInt(time.Now().UnixNano(), 10)
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		seq := strconv.Itoa(i + 1)
		msgs[i] = &nats.Msg{
			Subject: wire.LevelSubject("bench", forq.PriorityNormal),
			Reply:   "$JS.ACK.FORQ_TASKS.bench.1." + seq + "." + seq + "." + ts + ".0",
			Header:  nats.Header{"Nats-Msg-Id": {uuid.NewString()}, "Forq-Type": {"bench.noop"}},
			Data:    make([]byte, 64),
		}
	}
	return msgs
}

// BenchmarkProcess runs tasks one after another on one runner: the
// decode, handler call and ack of each, as the engine's runner calls
// Deliver. (The engine's own part, the dispatch to runners, is
// internal/pull's BenchmarkDispatchPath.)
func BenchmarkProcess(b *testing.B) {
	w, a := benchWorker(b, 1)
	msgs := benchDeliveries(b.N)
	r := &runner{w: w}
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		r.Deliver(ctx, pull.Delivery{Queue: "bench", Priority: forq.PriorityNormal, AckWait: 30 * time.Second, Msg: a.Msg(msgs[i])})
	}
}
