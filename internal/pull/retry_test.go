package pull_test

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
)

// retryLog collects the retry_in of every "fetch failed; retrying" the
// engine logs.
type retryLog struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (l *retryLog) Enabled(context.Context, slog.Level) bool { return true }

func (l *retryLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "fetch failed; retrying" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "retry_in" {
			l.mu.Lock()
			l.waits = append(l.waits, a.Value.Duration())
			l.mu.Unlock()
		}
		return true
	})
	return nil
}

func (l *retryLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *retryLog) WithGroup(string) slog.Handler      { return l }

func (l *retryLog) seen() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.waits)
}

// TestPullRetryIsCappedNearASecond: while a queue's consumers are gone
// (as on a cluster while a dead leader's consumers elect new ones, which
// answer "503 no responders" meanwhile), the engine retries its pulls
// with a wait that doubles from pull.RetryFirst but never exceeds
// pull.RetryMax (1 s), and once the consumers are back it runs a task
// enqueued then. Before, the wait grew to 5 s: after a leader's SIGKILL
// the workers of a three-node cluster ran tasks again 2.6 s after the
// cluster took enqueues again.
func TestPullRetryIsCappedNearASecond(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	logs := &retryLog{}
	e := newEngine(t, b, pull.Config{Queues: []string{forq.DefaultQueue}, Logger: slog.New(logs)})
	ran := make(chan string, 4)
	start(t, e, handlers{"t": func(_ context.Context, d pull.Delivery) {
		ran <- d.Msg.Headers().Get("Nats-Msg-Id")
	}})

	stream, err := b.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range forq.Priorities {
		if err := stream.DeleteConsumer(ctx, wire.LevelConsumerName(forq.DefaultQueue, p)); err != nil {
			t.Fatal(err)
		}
	}
	// Long enough for a doubling wait to pass the cap: 0.1+0.2+0.4+0.8
	// = 1.5 s, then 1.6 s, had it no cap.
	// Six failures: a doubling wait from 100 ms is past a second by the
	// fifth (1.6 s), had it no cap.
	testutil.Eventually(t, 20*time.Second, func() bool { return len(logs.seen()) >= 6 },
		"the engine did not log six failed pulls within 20 s of its consumers' deletion")
	waits := logs.seen()
	if waits[0] != pull.RetryFirst || pull.RetryFirst != 100*time.Millisecond {
		t.Errorf("first retry in %s; want 100ms", waits[0])
	}
	if m := slices.Max(waits); m > time.Second || pull.RetryMax != time.Second {
		t.Errorf("a failed pull was retried %s later; want at most a second (all: %v)", m, waits)
	}
	if waits[len(waits)-1] != time.Second {
		t.Errorf("the wait after six failed pulls is %s; want the cap, a second (all: %v)", waits[len(waits)-1], waits)
	}

	for _, p := range forq.Priorities {
		if _, err := topology.EnsureLevelConsumer(ctx, b.nc, stream, forq.DefaultQueue, p, 0); err != nil {
			t.Fatal(err)
		}
	}
	back := time.Now()
	info, err := b.p.Enqueue(ctx, forq.Task{Type: "t"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-ran:
		if id != info.ID {
			t.Fatalf("ran %s; want %s", id, info.ID)
		}
		t.Logf("failed pulls retried after %v; a task enqueued once the consumers were back ran %s later", waits, time.Since(back).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatalf("a task enqueued once the consumers were back did not run within 15 s")
	}
}
