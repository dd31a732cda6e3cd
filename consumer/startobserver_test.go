package consumer_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/producer"
)

// waits records what a StartObserver is told.
type waits struct {
	outcomes
	mu sync.Mutex
	w  map[string][]time.Duration // by type
}

func (o *waits) TaskStarted(queue, typ string, wait time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.w[typ] = append(o.w[typ], wait)
}

func (o *waits) get(typ string) []time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]time.Duration(nil), o.w[typ]...)
}

// A StartObserver is told, once per task (its first delivery, not its
// retries), how long the task waited from its enqueue to its start.
func TestStartObserverQueueWait(t *testing.T) {
	b := setup(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// Enqueued before any worker runs: they wait at least this long.
	const idle = 300 * time.Millisecond
	ok, err := b.p.Enqueue(ctx, forq.Task{Type: "ok"}, producer.WithQueue("sw"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	flaky, err := b.p.Enqueue(ctx, forq.Task{Type: "flaky", MaxAttempts: 3}, producer.WithQueue("sw"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(idle)
	obs := &waits{outcomes: outcomes{n: map[string]map[consumer.Outcome]int{}}, w: map[string][]time.Duration{}}
	w := newWorker(t, b, consumer.Config{Queues: []string{"sw"}, RetryBase: 10 * time.Millisecond, Observer: obs})
	w.HandleFunc("ok", func(ctx context.Context, task *consumer.Task) ([]byte, error) { return nil, nil })
	w.HandleFunc("flaky", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		if task.Attempt == 1 {
			return nil, errors.New("the first run fails")
		}
		return nil, nil
	})
	start(t, w)
	if _, err := b.p.WaitMany(ctx, []string{ok.ID, flaky.ID}); err != nil {
		t.Fatal(err)
	}
	if n := obs.outcomes.get("flaky", consumer.OutcomeRetried); n != 1 {
		t.Fatalf("flaky retried %d times, want 1", n)
	}
	for _, typ := range []string{"ok", "flaky"} {
		ws := obs.get(typ)
		if len(ws) != 1 || ws[0] < idle || ws[0] > 20*time.Second {
			t.Errorf("%s: waits %v; want one, at least %s", typ, ws, idle)
		}
	}
}
