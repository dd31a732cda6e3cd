package pull

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
)

// ackRunner acks each task at once: a runner with no work of its own.
type ackRunner struct{}

func (ackRunner) Deliver(_ context.Context, d Delivery) bool { _ = d.Msg.Ack(); return false }
func (ackRunner) Exit()                                      {}

// BenchmarkDispatchPath runs tasks as the pull loop hands them over,
// without the broker's part: each takes a slot and goes through the
// dispatcher to a runner, which acks it through the acker and frees its
// slot. Deliveries are made up beforehand, as the engine's subscription
// would get them from nats.go; the acks go to a real embedded broker,
// which drops them. What a worker does with a task (decode, handler,
// settle) is consumer's BenchmarkProcess.
func BenchmarkDispatchPath(b *testing.B) {
	s := testutil.Broker(b)
	nc := testutil.Connect(b, s.ClientURL())
	const concurrency = 256
	e := &Engine{cfg: Config{Conn: nc, Concurrency: concurrency}, slots: make(chan struct{}, concurrency), acker: NewAcker(nc, time.Millisecond)}
	e.disp = newDispatcher(e)
	var acker sync.WaitGroup
	acker.Go(e.acker.Run)
	ctx := b.Context()
	e.disp.newRunner, e.disp.base = func() Runner { return ackRunner{} }, ctx
	ts := strconv.FormatInt(time.Now().UnixNano(), 10)
	msgs := make([]*nats.Msg, b.N)
	for i := range msgs {
		seq := strconv.Itoa(i + 1)
		msgs[i] = &nats.Msg{Subject: wire.LevelSubject("bench", forq.PriorityNormal), Reply: "$JS.ACK.FORQ_TASKS.bench.1." + seq + "." + seq + "." + ts + ".0",
			Header: nats.Header{"Forq-Type": {"bench.noop"}}, Data: make([]byte, 64)}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		e.acquire(ctx)
		e.disp.dispatch(Delivery{Queue: "bench", Priority: forq.PriorityNormal, AckWait: 30 * time.Second, Msg: e.acker.Msg(msgs[i])})
	}
	e.disp.mu.Lock()
	runners := e.disp.running
	e.disp.mu.Unlock()
	b.ReportMetric(float64(runners), "runners")
	e.disp.close()
	e.disp.runners.Wait()
	e.acker.Close()
	acker.Wait()
}
