package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

var (
	poisonOK    = regexp.MustCompile(`(?m)\bok (normal-\d+)$`)
	poisonStart = regexp.MustCompile(`(?m)\bstart (\d+)$`)
)

// Poison tasks among 5,000 normal ones in a pool of 4 worker processes
// (issue 14, Done-when 3): a handler that panics, one that calls os.Exit,
// one that dies of SIGSEGV and one that loops ignoring its context. Each
// poison task is dead-lettered after exactly its attempts, with its
// reason; no normal task is dead-lettered (the crashes kill normal tasks
// running beside the poison, and that costs them no attempt); the pool
// keeps running and stops cleanly.
func TestPoisonTasksInAPool(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	nc, err := nats.Connect(b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	const normal, perKind, attempts = 5000, 3, 3
	kinds := []string{"panic", "exit", "segv", "loop"}
	var tasks []forq.Task
	for i := range normal {
		tasks = append(tasks, forq.Task{Type: "ok", ID: fmt.Sprintf("normal-%04d", i)})
	}
	var poison []string
	for k, kind := range kinds {
		for j := range perKind {
			id := fmt.Sprintf("poison-%s-%d", kind, j)
			poison = append(poison, id)
			// Spread among the normal tasks.
			at := (k*perKind + j + 1) * normal / (len(kinds)*perKind + 1)
			tasks[at] = forq.Task{Type: kind, ID: id, MaxAttempts: attempts, Timeout: time.Second, Record: true}
		}
	}
	// The four worker processes run four tasks at once each; the queue's
	// ack wait is 2s, so a crashed worker's tasks come back within it.
	began := time.Now()
	// The pool's default restart-storm limit: crashes of ready workers
	// (the poison's doing) must not stop it.
	pool := start(t, "forq", env, "pool", "-n", "4",
		"--", bin["poisonworker"], "--concurrency", "4", "--ack-wait", "2s")
	eventually(t, 20*time.Second, func() bool { return len(childPIDs(pool.cmd.Process.Pid)) == 4 }, "the pool did not start 4 workers")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := p.EnqueueMany(ctx, tasks); err != nil {
		t.Fatal(err)
	}
	normalDone := func() int {
		seen := map[string]bool{}
		for _, m := range poisonOK.FindAllStringSubmatch(pool.stdout(), -1) {
			seen[m[1]] = true
		}
		return len(seen)
	}
	eventually(t, 4*time.Minute, func() bool {
		return streamMsgs(t, js, forq.StreamTasks, wire.TaskSubject(forq.DefaultQueue)) == 0 && normalDone() == normal-len(poison)
	}, "not drained: %d tasks left, %d normal tasks done, dead letters %d",
		streamMsgs(t, js, forq.StreamTasks, wire.TaskSubject(forq.DefaultQueue)), normalDone(), streamMsgs(t, js, forq.StreamDead, ">"))
	drained := time.Since(began)

	ds := deadLetters(t, env)
	byID := map[string]admin.DeadLetter{}
	normalDead := 0
	for _, d := range ds {
		if !strings.HasPrefix(d.ID, "poison-") {
			normalDead++
			t.Errorf("normal task %s dead-lettered after %d attempts: %s", d.ID, d.Attempts, d.Error)
		}
		byID[d.ID] = d
	}
	reasons := map[string]string{
		"panic": "handler panicked: poison: panic in",
		"exit":  "its worker process died while running it alone",
		"segv":  "its worker process died while running it alone",
		"loop":  "task timed out after 1s",
	}
	rs := results(t, js, poison)
	var figures []string
	for _, id := range poison {
		kind := strings.Split(id, "-")[1]
		d, ok := byID[id]
		if !ok {
			t.Errorf("%s not dead-lettered; its record: %+v", id, rs[id])
			continue
		}
		if d.Attempts != attempts || !strings.Contains(d.Error, reasons[kind]) {
			t.Errorf("%s: dead after %d attempts with %q; want %d attempts and %q", id, d.Attempts, shortErr(d.Error), attempts, reasons[kind])
		}
		if kind == "loop" && !strings.Contains(d.Error, "abandoned") {
			t.Errorf("%s: %q does not say its handler was abandoned", id, shortErr(d.Error))
		}
		if r := rs[id]; r.State != forq.StateDead || r.Failures != attempts {
			t.Errorf("%s: record %s with %d failures, want dead with %d", id, r.State, r.Failures, attempts)
		}
		figures = append(figures, fmt.Sprintf("%s: %d attempts, run %d, %q", id, d.Attempts, rs[id].Run, shortErr(d.Error)))
	}
	// The pool replaces its crashed and recycled workers (after a back-off
	// of its own).
	eventually(t, 30*time.Second, func() bool { return len(childPIDs(pool.cmd.Process.Pid)) == 4 },
		"the pool has %d workers after the poison, want 4", len(childPIDs(pool.cmd.Process.Pid)))
	select {
	case <-pool.done:
		t.Fatalf("the pool stopped: %v\n%s", pool.err, tail(pool.stderr(), 2000))
	default:
	}
	processes := len(poisonStart.FindAllStringSubmatch(pool.stdout(), -1))
	pool.signal(syscall.SIGTERM)
	if code := pool.wait(30 * time.Second); code != 0 {
		t.Errorf("pool exit code %d after SIGTERM, want 0", code)
	}
	figuref(t, "%d normal and %d poison tasks (%d each of %v, %d attempts, timeout 1s) in a pool of 4 workers × 4 slots, ack wait 2s: "+
		"drained in %s; %d worker processes in all (%d replaced); %d dead letters, %d of them normal tasks",
		normal-len(poison), len(poison), perKind, kinds, attempts, drained.Round(100*time.Millisecond), processes, processes-4, len(ds), normalDead)
	for _, f := range figures {
		t.Log(f)
	}
}

func shortErr(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}
