package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
)

// naks records the broker's advisories of naked tasks (hand-backs, which
// it redelivers at once) on a queue's normal level, as an operator would
// watch them with "nats sub '$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.>'".
// A naked task stays pending acknowledgement at the broker until it is
// redelivered, so the advisory is what tells a hand-back from a task left
// to its ack wait.
type naks struct {
	mu  sync.Mutex
	got []nakEvent
}

type nakEvent struct {
	at  time.Time
	seq uint64 // stream sequence of the task
}

// abortLimit is how soon after its pool's death a worker must be gone and
// its running tasks handed back. It takes about 0.2 s (the figures), but
// a loaded machine (2 cores, -race, test packages in parallel) can stall a
// process or the broker for a second; 5 s still tells "at once" from the
// 30 s ack wait after which the tasks would come back anyway.
const abortLimit = 5 * time.Second

func watchNaks(t *testing.T, url, queue string) *naks {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	n := &naks{}
	_, err = nc.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED."+forq.StreamTasks+"."+wire.ConsumerName(queue), func(m *nats.Msg) {
		var a struct {
			StreamSeq uint64 `json:"stream_seq"`
		}
		if err := json.Unmarshal(m.Data, &a); err != nil {
			return
		}
		n.mu.Lock()
		n.got = append(n.got, nakEvent{time.Now(), a.StreamSeq})
		n.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return n
}

// since returns how many distinct tasks were naked after from, and when
// the last of them was.
func (n *naks) since(from time.Time) (int, time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	seen := map[uint64]bool{}
	var last time.Time
	for _, e := range n.got {
		if e.at.After(from) && !seen[e.seq] {
			seen[e.seq] = true
			last = e.at
		}
	}
	return len(seen), last
}

// handedBack waits until want tasks were naked after from, at most until
// deadline, and returns how long after from the last one was (or fails
// the test).
func (n *naks) handedBack(t *testing.T, want int, from, deadline time.Time) time.Duration {
	t.Helper()
	for {
		got, last := n.since(from)
		if got >= want {
			return last.Sub(from)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d running tasks handed back (naked) %s after the kill", got, want, time.Since(from).Round(time.Millisecond))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leftAlive returns, among the processes a killed pool had (its workers,
// the commands they ran and the commands' children) and the process groups
// of those commands, the ones that still live.
func leftAlive(procs []procEntry, groups []int) []string {
	var out []string
	for _, pid := range stillRunning(procs) {
		out = append(out, "pid "+strconv.Itoa(pid))
	}
	for _, g := range groups {
		if groupAlive(g) {
			out = append(out, "group "+strconv.Itoa(g))
		}
	}
	return out
}

// openTasks returns the indexes of the tasks of ids (results rs) not in a
// final state, and fails the test for a task dead-lettered (once: dead
// holds those already reported). runs(i) are task i's runs so far.
func openTasks(t *testing.T, round int, ids []string, rs map[string]forq.Result, dead map[int]bool, runs func(int) []int) []int {
	t.Helper()
	var open []int
	for i, id := range ids {
		s := rs[id].State
		if s == forq.StateDead && !dead[i] {
			dead[i] = true
			t.Errorf("round %d: task %d was dead-lettered after %d runs: %s", round, i, len(runs(i)), rs[id].Error)
		}
		if s != forq.StateSucceeded && s != forq.StateDead {
			open = append(open, i)
		}
	}
	return open
}

// newRuns returns which of the open tasks have run since before (their
// counts of runs then), and the process groups of those new runs.
func newRuns(open, before []int, runs func(int) []int) (running, groups []int) {
	for _, i := range open {
		if n := runs(i); len(n) > before[i] {
			running = append(running, i)
			groups = append(groups, n[before[i]:]...)
		}
	}
	return running, groups
}

// Issue 14, Done-when 4: the pool is SIGKILLed 20 times while its workers
// run exec tasks whose commands ignore SIGTERM (their shell traps it, and
// its child sleep inherits that). Every worker aborts on its parent-death
// signal whatever its dead stderr pipe does: 1 s after each kill no
// worker, command or child of a command is alive, and every running task
// was handed back (naked: the broker's advisory says so; without it the
// ack wait of 30 s would hold them); the next pool gets them at once; in
// the end all complete and none is dead-lettered.
func TestPoolKilledAbortsExecTasks(t *testing.T) {
	const (
		rounds = 20
		tasks  = 4
		// Each run of a task takes this long, past the time a round
		// lets it run, so that kills interrupt it; the last pool lets it
		// finish.
		runTime = "6"
	)
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	naked := watchNaks(t, b.url, forq.DefaultQueue)
	dir := t.TempDir()
	// Each run appends the command's PID (its process group, as the
	// worker makes it a group leader) to the task's runs file.
	script := `trap '' TERM; echo $$ >> "$0"; sleep ` + runTime + `; echo done`
	runsFile := func(i int) string { return filepath.Join(dir, "runs-"+strconv.Itoa(i)) }
	ids := make([]string, tasks)
	for i := range ids {
		ids[i] = enqueueExec(t, env, nil, "sh", "-c", script, runsFile(i))
	}
	runs := func(i int) []int { return readPIDs(t, runsFile(i)) }
	// The ack wait is the pool's explicit 30 s so that a hand-back (a nak,
	// redelivered at once) is told from a redelivery after the ack wait.
	poolArgs := []string{"pool", "-n", "2", "--concurrency", "2", "--allow-exec", "--ack-wait", "30s"}

	var (
		redeliver []time.Duration // from a kill to every unfinished task running again
		gone      []time.Duration // from a kill to the last process gone
		back      []time.Duration // from a kill to the last running task handed back
		killedAt  time.Time
	)
	final := func(s forq.State) bool { return s == forq.StateSucceeded || s == forq.StateDead }
	dead := map[int]bool{}
	for round := 1; round <= rounds; round++ {
		rs := results(t, js, ids)
		open := openTasks(t, round, ids, rs, dead, runs) // tasks not in a final state
		if len(open) == 0 {
			t.Errorf("round %d: no task left to interrupt (states %v)", round, states(rs, ids))
			break
		}
		before := make([]int, tasks)
		for _, i := range open {
			before[i] = len(runs(i))
		}
		p := start(t, "forq", env, poolArgs...)
		// Every open task runs again, unless it ended without running
		// (dead-lettered).
		eventually(t, 30*time.Second, func() bool {
			rs := results(t, js, ids)
			for _, i := range open {
				if len(runs(i)) == before[i] && !final(rs[ids[i]].State) {
					return false
				}
			}
			return true
		}, "round %d: not every open task %v started a run; runs before %v; states %v", round, open, before,
			lazy(func() string { return fmt.Sprint(states(results(t, js, ids), ids)) }))
		running, groups := newRuns(open, before, runs)
		if len(running) == 0 {
			continue // every open task ended without running (dead-lettered)
		}
		if round > 1 && len(running) == len(open) {
			redeliver = append(redeliver, time.Since(killedAt))
		}
		// The workers, the commands and the commands' children (a
		// shell writes its PID just before it starts its sleep).
		var procs []procEntry
		eventually(t, 10*time.Second, func() bool {
			procs = descendants(p.cmd.Process.Pid)
			return len(procs) >= 2+2*len(running)
		}, "round %d: the pool has %v descendants, want at least %d (2 workers, and a shell and its sleep per running task)",
			round, lazy(func() string { return strconv.Itoa(len(descendants(p.cmd.Process.Pid))) }), 2+2*len(running))
		p.signal(syscall.SIGKILL)
		killedAt = time.Now()
		p.wait(5 * time.Second)
		for len(leftAlive(procs, groups)) > 0 && time.Since(killedAt) < abortLimit {
			time.Sleep(10 * time.Millisecond)
		}
		gone = append(gone, time.Since(killedAt))
		if left := leftAlive(procs, groups); len(left) > 0 {
			t.Fatalf("round %d: %s after the pool was SIGKILLed these still live: %v", round, abortLimit, left)
		}
		back = append(back, naked.handedBack(t, len(running), killedAt, killedAt.Add(abortLimit)))
		rs = results(t, js, ids)
		for _, i := range running {
			if s := rs[ids[i]].State; s != forq.StateQueued {
				t.Errorf("round %d: task %d is %s after the kill, want queued (handed back)", round, i, s)
			}
		}
	}
	figuref(t, "%d pool kills: every worker, command and command's child gone after %s", len(gone), spread(gone))
	figuref(t, "from a kill to every running task handed back at the broker (ack wait 30s): %s", spread(back))
	figuref(t, "from a kill to every open task running again in the next pool (its start included): %s", spread(redeliver))

	start(t, "forq", env, poolArgs...)
	eventually(t, 60*time.Second, func() bool {
		rs := results(t, js, ids)
		return countState(rs, forq.StateSucceeded)+countState(rs, forq.StateDead) == tasks
	}, "the tasks did not all end: %v", lazy(func() string { return fmt.Sprint(states(results(t, js, ids), ids)) }))
	rs := results(t, js, ids)
	var runCounts []int
	for i, id := range ids {
		runCounts = append(runCounts, len(runs(i)))
		if rs[id].State != forq.StateSucceeded {
			t.Errorf("task %d: %s after %d runs (%s), want succeeded", i, rs[id].State, len(runs(i)), rs[id].Error)
		}
	}
	if n := streamMsgs(t, js, forq.StreamDead, ""); n != 0 {
		t.Errorf("%d tasks dead-lettered, want none", n)
	}
	figuref(t, "runs per task: %v; final states %v", runCounts, states(rs, ids))
}

func states(rs map[string]forq.Result, ids []string) []forq.State {
	out := make([]forq.State, len(ids))
	for i, id := range ids {
		out[i] = rs[id].State
	}
	return out
}

// lazy is a message argument computed when the message is printed.
type lazy func() string

func (l lazy) String() string { return l() }

// spread formats durations as min/median/max.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	r := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	return fmt.Sprintf("min %s, median %s, max %s (n=%d)", r(s[0]), r(s[len(s)/2]), r(s[len(s)-1]), len(s))
}

// A user's own worker binary built on package consumer (examples/worker),
// run by a pool that is SIGKILLed: it aborts at once, handing its running
// tasks back (it would otherwise wait out its tasks and then the ack wait),
// and another worker completes them within 5 s.
func TestUserWorkerAbortsWhenItsPoolDies(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	naked := watchNaks(t, b.url, "words")
	p := start(t, "forq", env, "pool", "-n", "1", "-q", "words", "--",
		bin["worker"], "--concurrency", "2", "--work", "60s", "--ack-wait", "30s")
	var ids []string
	for range 2 {
		code, out, errs := run(t, nil, env, "enqueue", "wordcount", "-q", "words", "--record", "--payload", `{"text":"one two three"}`)
		if code != 0 {
			t.Fatalf("enqueue: exit %d: %s", code, errs)
		}
		ids = append(ids, strings.TrimSpace(out))
	}
	eventually(t, 20*time.Second, func() bool { return countState(results(t, js, ids), forq.StateRunning) == 2 },
		"the tasks never ran: %v", lazy(func() string { return fmt.Sprint(states(results(t, js, ids), ids)) }))
	procs := descendants(p.cmd.Process.Pid)
	if len(procs) != 1 {
		t.Fatalf("the pool has descendants %v, want its one worker", procs)
	}
	p.signal(syscall.SIGKILL)
	killed := time.Now()
	p.wait(5 * time.Second)
	for len(stillRunning(procs)) > 0 && time.Since(killed) < abortLimit {
		time.Sleep(10 * time.Millisecond)
	}
	exited := time.Since(killed)
	if left := stillRunning(procs); len(left) > 0 {
		t.Fatalf("the worker %v still runs %s after its pool was SIGKILLed", left, abortLimit)
	}
	back := naked.handedBack(t, 2, killed, killed.Add(abortLimit))
	if got := states(results(t, js, ids), ids); got[0] != forq.StateQueued || got[1] != forq.StateQueued {
		t.Errorf("states after the kill %v, want both queued", got)
	}
	second := time.Now()
	start(t, "worker", env, "--queue", "words", "--concurrency", "2")
	eventually(t, 15*time.Second, func() bool { return countState(results(t, js, ids), forq.StateSucceeded) == 2 },
		"a second worker did not complete the tasks within 15s (their ack wait is 30s): %v", lazy(func() string { return fmt.Sprint(states(results(t, js, ids), ids)) }))
	figuref(t, "the worker exited %s and its tasks were handed back %s after its pool was killed (ack wait 30s); a second worker (its start included) completed both %s after it started",
		exited.Round(time.Millisecond), back.Round(time.Millisecond), time.Since(second).Round(time.Millisecond))
}

// A pool stopping gracefully (SIGTERM: its workers drain, for up to 30s)
// is SIGKILLed during the drain: the workers, which took the first
// SIGTERM for a normal stop, still see their supervisor die and abort at
// once, handing back the tasks they were letting finish.
func TestPoolKilledWhileDraining(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	naked := watchNaks(t, b.url, forq.DefaultQueue)
	p := start(t, "forq", env, "pool", "-n", "2", "--grace", "30s", "--ack-wait", "30s")
	ids := enqueueLines(t, env, "sleep", 2, func(int) string { return "60s" }, "--record")
	eventually(t, 20*time.Second, func() bool { return countState(results(t, js, ids), forq.StateRunning) == 2 },
		"the tasks never ran: %v", lazy(func() string { return fmt.Sprint(states(results(t, js, ids), ids)) }))
	procs := descendants(p.cmd.Process.Pid)
	p.signal(syscall.SIGTERM)
	eventually(t, 10*time.Second, func() bool { return strings.Count(p.stderr(), "stopping: waiting for running tasks") == 2 },
		"the workers did not start draining")
	time.Sleep(300 * time.Millisecond) // well into the drain
	if left := stillRunning(procs); len(left) != len(procs) {
		t.Fatalf("only %v of %d processes still drain 300ms after the SIGTERM, want all", left, len(procs))
	}
	p.signal(syscall.SIGKILL)
	killed := time.Now()
	p.wait(5 * time.Second)
	for len(stillRunning(procs)) > 0 && time.Since(killed) < abortLimit {
		time.Sleep(10 * time.Millisecond)
	}
	exited := time.Since(killed)
	if left := stillRunning(procs); len(left) > 0 {
		t.Fatalf("workers %v still run %s after their draining pool was SIGKILLed", left, abortLimit)
	}
	back := naked.handedBack(t, 2, killed, killed.Add(abortLimit))
	figuref(t, "draining workers exited %s and handed their tasks back %s after the pool was SIGKILLed (grace 30s)",
		exited.Round(time.Millisecond), back.Round(time.Millisecond))
}
