package producer_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go/jetstream"
)

// Enqueues in flight while the broker stops and starts again on its data
// directory return nil within their context, once the broker is back, and
// store each task once: a publish whose answer the stop cut off is sent
// again with the same ID.
func TestEnqueueRidesOutBrokerRestart(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	start := func() *broker.Server {
		s, err := broker.New(broker.Options{DataDir: dir, Port: port})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		if err := s.WaitReady(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := start()
	nc := testutil.Connect(t, s.ClientURL())
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	const restarts, senders = 3, 4
	var (
		mu      sync.Mutex
		slowest time.Duration
		total   int
		failed  []string
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("r%d-%d", g, i)
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				t0 := time.Now()
				_, err := p.Enqueue(ctx, forq.Task{Type: "x"}, producer.WithID(id))
				d := time.Since(t0)
				cancel()
				mu.Lock()
				total++
				slowest = max(slowest, d)
				if err != nil {
					failed = append(failed, fmt.Sprintf("%s after %s: %v", id, d.Round(time.Millisecond), err))
				}
				mu.Unlock()
			}
		})
	}
	for range restarts {
		time.Sleep(300 * time.Millisecond)
		s.Shutdown()
		s = start()
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	defer s.Shutdown()
	if len(failed) > 0 {
		t.Errorf("%d of %d enqueues failed across %d broker restarts; first: %s", len(failed), total, restarts, failed[0])
	}
	// Each enqueue's wait includes the broker's stop and start; what is
	// bounded is that it does not wait for its whole context.
	if slowest > 10*time.Second {
		t.Errorf("slowest enqueue took %s: it waited for its context, not for the broker", slowest)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := int(info.State.Msgs), total-len(failed); got != want {
		t.Errorf("stream holds %d tasks, want %d (one per acknowledged enqueue, no duplicate)", got, want)
	}
	t.Logf("%d enqueues by %d senders over %d graceful broker restarts: %d failed, slowest %s, stream holds %d",
		total, senders, restarts, len(failed), slowest.Round(time.Millisecond), info.State.Msgs)
}
