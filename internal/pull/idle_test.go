package pull_test

import (
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// An idle engine long-polls its normal level and re-checks the others
// every IdlePoll, but does not ask the normal level with a no-wait pull
// between two long polls that found nothing: each such pull would cost the
// broker a request, for a level the next long poll asks at once anyway.
// A task enqueued meanwhile still starts.
func TestIdleEngineLongPollsWithoutNoWaitPulls(t *testing.T) {
	b := setup(t)
	const q = "idle"
	e := newEngine(t, b, pull.Config{Queues: []string{q}, Concurrency: 4})
	var mu sync.Mutex
	counts := map[string]int{} // "<consumer> wait" or "<consumer> no_wait"
	prefix := "$JS.API.CONSUMER.MSG.NEXT." + forq.StreamTasks + "."
	sub, err := b.nc.Subscribe(prefix+">", func(m *nats.Msg) {
		kind := "wait"
		if strings.Contains(string(m.Data), "no_wait") {
			kind = "no_wait"
		}
		mu.Lock()
		counts[strings.TrimPrefix(m.Subject, prefix)+" "+kind]++
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	var s starts
	start(t, e, handlers{"t": s.handler(0)})
	// The first sweep asks every level; from the second on the engine is
	// idle.
	time.Sleep(2 * idlePoll)
	mu.Lock()
	clear(counts)
	mu.Unlock()
	time.Sleep(8 * idlePoll)
	mu.Lock()
	normal := wire.LevelConsumerName(q, forq.PriorityNormal)
	high := wire.LevelConsumerName(q, forq.PriorityHigh)
	got := maps.Clone(counts)
	mu.Unlock()
	if got[normal+" no_wait"] != 0 {
		t.Errorf("idle: %d no-wait pulls of the normal level, want 0 (all: %v)", got[normal+" no_wait"], got)
	}
	if got[normal+" wait"] < 4 {
		t.Errorf("idle: %d long polls of the normal level over 8 idle polls, want at least 4 (all: %v)", got[normal+" wait"], got)
	}
	if got[high+" no_wait"] < 4 {
		t.Errorf("idle: %d re-checks of the high level over 8 idle polls, want at least 4 (all: %v)", got[high+" no_wait"], got)
	}
	enqueueN(t, b, 1, producer.WithQueue(q))
	testutil.Eventually(t, 5*time.Second, func() bool { return s.len() == 1 }, "the task enqueued to an idle engine does not start")
}
