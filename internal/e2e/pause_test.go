package e2e

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// queueStats runs "forq stats --json --queue q" and returns q's line.
func queueStats(t *testing.T, env []string, q string) map[string]any {
	t.Helper()
	code, out, errs := run(t, nil, env, "stats", "--json", "--queue", q)
	if code != 0 {
		t.Fatalf("forq stats: exit %d: %s", code, errs)
	}
	var st struct {
		Queues []map[string]any `json:"queues"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Queues) != 1 {
		t.Fatalf("forq stats --json: %v: %q", err, out)
	}
	return st.Queues[0]
}

func consumerInfo(t *testing.T, js jetstream.JetStream, q string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := js.Consumer(t.Context(), forq.StreamTasks, wire.ConsumerName(q))
	if err != nil {
		t.Fatalf("consumer %s: %v", q, err)
	}
	return c.CachedInfo()
}

// A paused queue starts nothing (a task already running finishes), shows
// as paused in forq stats and in the consumer's info, and runs everything
// once resumed.
func TestPauseResume(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	start(t, "forq", env, "work", "--queue", "pq", "--concurrency", "4")
	eventually(t, 10*time.Second, func() bool {
		_, err := js.Consumer(t.Context(), forq.StreamTasks, "pq")
		return err == nil
	}, "the worker did not declare its consumer")

	code, out, errs := run(t, nil, env, "enqueue", "sleep", "--queue", "pq", "--payload", "1s", "--record")
	if code != 0 {
		t.Fatalf("enqueue: exit %d: %s", code, errs)
	}
	long := strings.TrimSpace(out)
	eventually(t, 10*time.Second, func() bool { return results(t, js, []string{long})[long].State == forq.StateRunning }, "sleep task did not start")

	code, out, errs = run(t, nil, env, "pause", "pq")
	if code != 0 || !strings.Contains(out, "paused queue pq") {
		t.Fatalf("forq pause: exit %d, %q, %q", code, out, errs)
	}
	ids := enqueueLines(t, env, "echo", 20, strconv.Itoa, "--queue", "pq", "--record")
	eventually(t, 10*time.Second, func() bool { return results(t, js, []string{long})[long].State == forq.StateSucceeded },
		"the task running when the queue was paused did not finish: %+v", results(t, js, []string{long})[long])

	time.Sleep(2 * time.Second)
	if n := streamMsgs(t, js, forq.StreamTasks, wire.TaskSubject("pq")); n != 20 {
		t.Errorf("%d tasks in the paused queue, want 20", n)
	}
	if rs := results(t, js, ids); countNotStarted(rs, ids) != 20 {
		t.Errorf("tasks of the paused queue started: %d of 20 not started (%v)", countNotStarted(rs, ids), rs)
	}
	ci := consumerInfo(t, js, "pq")
	if !ci.Paused || ci.Config.PauseUntil == nil || ci.Config.PauseUntil.Before(time.Now().AddDate(100, 0, 0)) {
		t.Errorf("consumer info: paused %v until %v; want paused indefinitely", ci.Paused, ci.Config.PauseUntil)
	}
	if qs := queueStats(t, env, "pq"); qs["paused"] != true || qs["queued"] != float64(20) {
		t.Errorf("forq stats: %v; want paused with 20 queued", qs)
	}

	code, out, errs = run(t, nil, env, "resume", "pq")
	if code != 0 || !strings.Contains(out, "resumed queue pq") {
		t.Fatalf("forq resume: exit %d, %q, %q", code, out, errs)
	}
	eventually(t, 20*time.Second, func() bool { return countState(results(t, js, ids), forq.StateSucceeded) == 20 },
		"after resume %d of 20 tasks succeeded", countState(results(t, js, ids), forq.StateSucceeded))
	if ci := consumerInfo(t, js, "pq"); ci.Paused {
		t.Errorf("consumer still paused after resume")
	}
	if qs := queueStats(t, env, "pq"); qs["paused"] != false {
		t.Errorf("forq stats after resume: %v; want not paused", qs)
	}
	code, out, _ = run(t, nil, env, "resume", "pq")
	if code != 0 || !strings.Contains(out, "was not paused") {
		t.Errorf("resume of a running queue: exit %d, %q", code, out)
	}

	for _, args := range [][]string{{"pause", "bad.queue"}, {"pause", "pq", "--for", "1s", "--until", "2030-01-01T00:00:00Z"}, {"pause", "pq", "--until", "2001-01-01T00:00:00Z"}, {"pause", "pq", "--until", "tomorrow"}} {
		if code, _, errs := run(t, nil, env, args...); code != 2 {
			t.Errorf("forq %v: exit %d (%s), want 2", args, code, errs)
		}
	}
	code, _, errs = run(t, nil, env, "resume", "nosuchqueue")
	if code != 1 || !strings.Contains(errs, "no such queue") {
		t.Errorf("resume of an unknown queue: exit %d, %q; want 1 and a clear error", code, errs)
	}
}

// A queue without a consumer yet can be paused for a while: the pause
// creates its consumer, the workers started later wait for the pause to
// end, then run the tasks.
func TestPauseForNewQueue(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	code, out, errs := run(t, nil, env, "pause", "later", "--for", "4s")
	if code != 0 || !strings.Contains(out, "paused queue later until") {
		t.Fatalf("forq pause --for: exit %d, %q, %q", code, out, errs)
	}
	paused := time.Now()
	ci := consumerInfo(t, js, "later")
	if !ci.Paused || ci.Config.PauseUntil == nil || ci.Config.PauseUntil.After(paused.Add(5*time.Second)) {
		t.Fatalf("consumer info: paused %v until %v; want paused for 4s", ci.Paused, ci.Config.PauseUntil)
	}
	ids := enqueueLines(t, env, "echo", 5, strconv.Itoa, "--queue", "later", "--record")
	start(t, "forq", env, "work", "--queue", "later", "--concurrency", "2")
	time.Sleep(time.Until(paused.Add(2 * time.Second)))
	if n := countNotStarted(results(t, js, ids), ids); n != 5 {
		t.Errorf("%d of 5 tasks not started during the pause, want 5", n)
	}
	eventually(t, 20*time.Second, func() bool { return countState(results(t, js, ids), forq.StateSucceeded) == 5 },
		"after the pause %d of 5 tasks succeeded", countState(results(t, js, ids), forq.StateSucceeded))
	for id, r := range results(t, js, ids) {
		if r.StartedAt.Before(paused.Add(3 * time.Second)) {
			t.Errorf("task %s started at %s, %s after the pause began, want ≥ 4s", id, r.StartedAt, r.StartedAt.Sub(paused))
		}
	}
}
