package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/producer"
)

// outcomes counts what an Observer is told, by task type.
type outcomes struct {
	mu sync.Mutex
	n  map[string]map[consumer.Outcome]int
}

func (o *outcomes) TaskDone(queue, typ string, out consumer.Outcome, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n[typ] == nil {
		o.n[typ] = map[consumer.Outcome]int{}
	}
	o.n[typ][out]++
}

func (o *outcomes) get(typ string, out consumer.Outcome) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[typ][out]
}

// runsOf records each run of a task: when, and its attempt.
type runsOf struct {
	mu   sync.Mutex
	at   map[string][]time.Time
	atts map[string][]int
}

func (r *runsOf) add(t *consumer.Task) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.at[t.ID] = append(r.at[t.ID], time.Now())
	r.atts[t.ID] = append(r.atts[t.ID], t.Attempt)
	return len(r.at[t.ID])
}

func (r *runsOf) get(id string) ([]time.Time, []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.at[id]...), append([]int(nil), r.atts[id]...)
}

// A handler that returns Snooze(d) gets its task back after d, and the run
// is no attempt: a task of one attempt snoozes three times and succeeds;
// a failure before a snooze counts once; a snoozed task has a queued
// record saying when it is due, whether or not it asked for a record; the
// Observer is told OutcomeSnoozed.
func TestSnooze(t *testing.T) {
	b := setup(t)
	obs := &outcomes{n: map[string]map[consumer.Outcome]int{}}
	w := newWorker(t, b, consumer.Config{Queues: []string{"snz"}, Concurrency: 4, RetryBase: 10 * time.Millisecond, Observer: obs})
	runs := &runsOf{at: map[string][]time.Time{}, atts: map[string][]int{}}
	const delay = 300 * time.Millisecond
	w.HandleFunc("thrice", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		if runs.add(task) <= 3 {
			return nil, fmt.Errorf("rate limited: %w", consumer.Snooze(delay))
		}
		return []byte("ok"), nil
	})
	w.HandleFunc("fail-then-snooze", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		switch runs.add(task) {
		case 1:
			return nil, errors.New("flaky")
		case 2:
			return nil, consumer.Snooze(-time.Second) // at once
		}
		return []byte("ok"), nil
	})
	w.HandleFunc("later", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		runs.add(task)
		return nil, consumer.Snooze(time.Hour)
	})
	start(t, w)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	thrice, err := b.p.Enqueue(ctx, forq.Task{Type: "thrice", MaxAttempts: 1}, producer.WithQueue("snz"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	flaky, err := b.p.Enqueue(ctx, forq.Task{Type: "fail-then-snooze", MaxAttempts: 3}, producer.WithQueue("snz"), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	later, err := b.p.Enqueue(ctx, forq.Task{Type: "later"}, producer.WithQueue("snz")) // no record asked
	if err != nil {
		t.Fatal(err)
	}
	rs, err := b.p.WaitMany(ctx, []string{thrice.ID, flaky.ID})
	if err != nil {
		t.Fatal(err)
	}
	checkSnoozedThrice(t, rs[0], runs, thrice.ID, delay)
	if r := rs[1]; r.State != forq.StateSucceeded || r.Attempts != 2 || r.Failures != 1 {
		t.Errorf("failed, snoozed, ran: %s after %d attempts, %d failures; want succeeded after 2, 1 failure", r.State, r.Attempts, r.Failures)
	}
	if _, atts := runs.get(flaky.ID); fmt.Sprint(atts) != "[1 2 2]" {
		t.Errorf("failed, snoozed, ran: attempts %v, want [1 2 2]", atts)
	}
	r := queuedRecord(t, b, later.ID)
	if due := time.Until(r.ScheduledAt); r.Failures != 0 || r.Attempts != 1 || due < 59*time.Minute || due > time.Hour {
		t.Errorf("the task snoozed for an hour: record %+v (due in %s), want queued, 1 attempt, no failure, due in an hour", r, due)
	}
	if n := obs.get("thrice", consumer.OutcomeSnoozed); n != 3 {
		t.Errorf("Observer told of %d snoozes, want 3", n)
	}
	if n := obs.get("fail-then-snooze", consumer.OutcomeRetried); n != 1 {
		t.Errorf("Observer told of %d retries, want 1", n)
	}
	if !errors.Is(fmt.Errorf("x: %w", consumer.Snooze(time.Second)), consumer.ErrSnoozed) {
		t.Errorf("a wrapped Snooze is not ErrSnoozed")
	}
}

// checkSnoozedThrice checks the task that snoozed three times for delay:
// succeeded on its one attempt, each run a delay after the one before.
func checkSnoozedThrice(t *testing.T, r *forq.Result, runs *runsOf, id string, delay time.Duration) {
	t.Helper()
	if r.State != forq.StateSucceeded || r.Attempts != 1 || r.Failures != 0 {
		t.Errorf("snoozed thrice: %s after %d attempts, %d failures (%q); want succeeded after 1, none", r.State, r.Attempts, r.Failures, r.Error)
	}
	at, atts := runs.get(id)
	if len(at) != 4 {
		t.Fatalf("snoozed thrice: %d runs, want 4", len(at))
	}
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < delay*8/10 {
			t.Errorf("run %d came %s after the snooze of %s", i+1, gap, delay)
		}
		if atts[i] != 1 {
			t.Errorf("run %d after snoozes is attempt %d, want 1", i+1, atts[i])
		}
	}
}

// queuedRecord waits for task id's record to say queued, and returns it.
func queuedRecord(t *testing.T, b *bundle, id string) *forq.Result {
	t.Helper()
	var r *forq.Result
	deadline := time.Now().Add(10 * time.Second)
	for r == nil || r.State != forq.StateQueued {
		if time.Now().After(deadline) {
			t.Fatalf("task %s has no queued record: %+v", id, r)
		}
		time.Sleep(20 * time.Millisecond)
		r, _ = b.p.Result(t.Context(), id)
	}
	return r
}
