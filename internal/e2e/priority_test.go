package e2e

import (
	"slices"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// Done-when 3: with 10,000 low priority tasks queued, a high priority task
// enqueued afterwards starts before the next batch of low ones. One worker
// with --concurrency 4 pulls at most 4 tasks at a time, so at most 4 low
// tasks may start between the high task's enqueue and its start.
func TestPriorityHighBeforeLowFlood(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	lows := enqueueLines(t, env, "sleep", 10000, func(int) string { return "10ms" }, "--queue", "jobs", "--priority", "low", "--record")
	if len(lows) != 10000 {
		t.Fatalf("enqueued %d low tasks, want 10000", len(lows))
	}
	w := start(t, "forq", env, "--log-level", "debug", "work", "--queue", "jobs", "--concurrency", "4")
	js := b.js(t)
	eventually(t, 20*time.Second, func() bool { return countState(results(t, js, lows[:40]), forq.StateSucceeded) >= 20 }, "low tasks do not run")

	nc, err := nats.Connect(b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.Enqueue(t.Context(), forq.Task{Type: "sleep", Payload: []byte("10ms")}, producer.WithQueue("jobs"), producer.WithPriority(forq.PriorityHigh), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	enqueued := time.Now()
	var high forq.Result
	eventually(t, 10*time.Second, func() bool {
		high = results(t, js, []string{info.ID})[info.ID]
		return !high.StartedAt.IsZero()
	}, "the high task did not start")
	w.signal(9)
	<-w.done
	late := 0
	started := 0
	for _, r := range results(t, js, lows) {
		if r.StartedAt.IsZero() {
			continue
		}
		started++
		if r.StartedAt.After(enqueued) && r.StartedAt.Before(high.StartedAt) {
			late++
		}
	}
	t.Logf("high task started %s after its enqueue; %d low tasks had started; %d between", high.StartedAt.Sub(enqueued), started, late)
	if late > 4 {
		t.Errorf("%d low tasks started between the high task's enqueue and its start; want at most one batch (4)", late)
	}
	if started >= 10000 {
		t.Errorf("every low task started; the test shows nothing")
	}
}

// forq pool passes --queue, --order and --weights to its workers: strict
// runs the first queue's tasks before any of the second's; weighted runs
// both, about 3 to 1.
func TestQueueOrderStrictAndWeighted(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	startOrder := func(ids ...[]string) (order []int) {
		type st struct {
			at time.Time
			q  int
		}
		var all []st
		for q, list := range ids {
			for _, r := range results(t, js, list) {
				if !r.StartedAt.IsZero() {
					all = append(all, st{r.StartedAt, q})
				}
			}
		}
		slices.SortFunc(all, func(a, b st) int { return a.at.Compare(b.at) })
		for _, s := range all {
			order = append(order, s.q)
		}
		return order
	}
	payload := func(int) string { return "5ms" }

	// Strict.
	second := enqueueLines(t, env, "sleep", 100, payload, "--queue", "second", "--record")
	first := enqueueLines(t, env, "sleep", 100, payload, "--queue", "first", "--record")
	p := start(t, "forq", env, "pool", "-n", "1", "--concurrency", "2", "--queue", "first,second", "--order", "strict")
	eventually(t, 30*time.Second, func() bool { return countState(results(t, js, second), forq.StateSucceeded) == 100 }, "strict: tasks do not all run")
	p.signal(15)
	p.wait(20 * time.Second)
	order := startOrder(first, second)
	// Two slots: the last pull of first may take one of second with it.
	if n := slices.Index(order, 1); n < 99 {
		t.Errorf("strict: a task of queue second started after only %d of first's 100", n)
	}

	// Weighted.
	light := enqueueLines(t, env, "sleep", 300, payload, "--queue", "light", "--record")
	heavy := enqueueLines(t, env, "sleep", 300, payload, "--queue", "heavy", "--record")
	p = start(t, "forq", env, "pool", "-n", "1", "--concurrency", "1", "--queue", "light,heavy", "--order", "weighted", "--weights", "heavy=3,light=1")
	eventually(t, 60*time.Second, func() bool { return countState(results(t, js, light), forq.StateSucceeded) == 300 }, "weighted: tasks do not all run")
	p.signal(15)
	p.wait(20 * time.Second)
	order = startOrder(light, heavy)
	h := 0
	for _, q := range order[:200] {
		h += q
	}
	if ratio := float64(h) / float64(200-h); ratio < 2 || ratio > 4.5 {
		t.Errorf("weighted: the first 200 starts were %d heavy, %d light; want about 3 to 1", h, 200-h)
	}
}

func TestPriorityBadFlags(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	for _, args := range [][]string{
		{"enqueue", "echo", "--priority", "urgent"},
		{"enqueue", "echo", "--queue", "jobs--high"},
		{"work", "--queue", "a,b", "--weights", "a=2"},
		{"work", "--queue", "a,b", "--order", "weighted", "--weights", "c=2"},
		{"work", "--queue", "a,b", "--order", "weighted", "--weights", "a=x"},
		{"work", "--order", "fair"},
	} {
		code, _, errs := run(t, nil, env, args...)
		if code != 2 {
			t.Errorf("forq %v: exit %d, want 2; stderr: %s", args, code, errs)
		} else {
			t.Logf("forq %v: %s", args, errs)
		}
	}
}
