package admin_test

import (
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
)

// OldestQueued is the stream time of each level's first task not yet
// delivered: of the first enqueued while no consumer exists, of the next
// one once the first was delivered.
func TestOldestQueued(t *testing.T) {
	b := setup(t)
	if got, err := b.in.OldestQueued(t.Context(), "oq"); err != nil || len(got) != 0 {
		t.Fatalf("empty broker: %v, %v; want nothing", got, err)
	}
	if _, err := b.in.OldestQueued(t.Context(), "bad queue"); err == nil {
		t.Error("a bad queue name: no error")
	}
	p := b.producer(t)
	var times [3][2]time.Time // before and after each enqueue
	for i := range times {
		times[i][0] = time.Now()
		enqueue(t, p, "x", producer.WithQueue("oq"))
		times[i][1] = time.Now()
		time.Sleep(5 * time.Millisecond)
	}
	within := func(what string, got time.Time, i int) {
		t.Helper()
		if got.Before(times[i][0]) || got.After(times[i][1]) {
			t.Errorf("%s: oldest %s, want task %d's enqueue, between %s and %s", what, got, i, times[i][0], times[i][1])
		}
	}
	got, err := b.in.OldestQueued(t.Context(), "oq")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("no consumer yet: %v; want the normal level only", got)
	}
	within("no consumer yet", got[forq.PriorityNormal], 0)

	// Declare the consumers (a pause does), then take the first task as a
	// worker would, without acknowledging it.
	if _, err := b.in.Pause(t.Context(), "oq", admin.PauseForever, 0); err != nil {
		t.Fatal(err)
	}
	got, _ = b.in.OldestQueued(t.Context(), "oq")
	within("consumer declared, nothing delivered", got[forq.PriorityNormal], 0)
	if err := b.in.Resume(t.Context(), "oq"); err != nil {
		t.Fatal(err)
	}
	c, err := b.js.Consumer(t.Context(), forq.StreamTasks, wire.LevelConsumerName("oq", forq.PriorityNormal))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(1)
	if err != nil {
		t.Fatal(err)
	}
	for range msgs.Messages() {
	}
	got, _ = b.in.OldestQueued(t.Context(), "oq")
	within("first task delivered", got[forq.PriorityNormal], 1)

	before := time.Now()
	enqueue(t, p, "x", producer.WithQueue("oq"), producer.WithPriority(forq.PriorityHigh))
	got, _ = b.in.OldestQueued(t.Context(), "oq")
	if h := got[forq.PriorityHigh]; h.Before(before) || len(got) != 2 {
		t.Errorf("after a high task: %v; want the high level's oldest after %s beside the normal one", got, before)
	}
}
