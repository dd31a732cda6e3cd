package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go/jetstream"
)

// childPIDs returns the live (not zombie) children of pid.
func childPIDs(pid int) []int {
	var out []int
	for _, c := range children(pid) {
		n, _ := strconv.Atoi(strings.Fields(c)[0])
		out = append(out, n)
	}
	return out
}

// alive reports whether pid is a live, non-zombie process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	return s[strings.LastIndexByte(s, ')')+2] != 'Z'
}

// groupAlive reports whether any process of process group pgid lives.
func groupAlive(pgid int) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err == nil && g == pgid && alive(pid) {
			return true
		}
	}
	return false
}

var succeeded = regexp.MustCompile(`msg="task succeeded" task=(\S+).* pid=(\d+)`)

// handled returns the task IDs the pool's workers logged as succeeded, and
// the PIDs that ran them.
func handled(p *proc) (ids []string, pids map[string]int) {
	pids = map[string]int{}
	for _, m := range succeeded.FindAllStringSubmatch(p.stderr(), -1) {
		ids = append(ids, m[1])
		pids[m[2]]++
	}
	return ids, pids
}

// enqueueLines enqueues n tasks of type typ, one per line, and returns
// their IDs.
func enqueueLines(t *testing.T, env []string, typ string, n int, payload func(i int) string, extra ...string) []string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "tasks")
	var b strings.Builder
	for i := range n {
		b.WriteString(payload(i) + "\n")
	}
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, nil, env, append([]string{"enqueue", typ, "--file", f, "--lines"}, extra...)...)
	if code != 0 {
		t.Fatalf("enqueue: exit %d: %s", code, errs)
	}
	return strings.Fields(out)
}

func results(t *testing.T, js jetstream.JetStream, ids []string) map[string]forq.Result {
	t.Helper()
	kv, err := js.KeyValue(t.Context(), forq.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]forq.Result{}
	for _, id := range ids {
		e, err := kv.Get(t.Context(), id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var r forq.Result
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			t.Fatal(err)
		}
		out[id] = r
	}
	return out
}

// countNotStarted counts the tasks of ids that no worker has started: no
// record yet (a recorded task gets one when a worker starts it) or a
// queued one (a delayed task's, or one retried from the dead letters).
func countNotStarted(rs map[string]forq.Result, ids []string) int {
	n := 0
	for _, id := range ids {
		if r, ok := rs[id]; !ok || r.State == forq.StateQueued {
			n++
		}
	}
	return n
}

func countState(rs map[string]forq.Result, s forq.State) int {
	n := 0
	for _, r := range rs {
		if r.State == s {
			n++
		}
	}
	return n
}

// forq pool -n 4: four worker processes, children of the pool, share one
// queue; 10,000 tasks are processed once each.
func TestPoolProcessesEachTaskOnce(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	ids := enqueueLines(t, env, "echo", 10000, strconv.Itoa)
	p := start(t, "forq", env, "--log-level", "debug", "pool", "-n", "4", "--concurrency", "4")
	eventually(t, 10*time.Second, func() bool { return len(childPIDs(p.cmd.Process.Pid)) == 4 }, "pool has %d children, want 4", len(childPIDs(p.cmd.Process.Pid)))
	kids := childPIDs(p.cmd.Process.Pid)
	for _, k := range kids {
		if g, _ := syscall.Getpgid(k); g != k {
			t.Errorf("child %d is in process group %d, want its own", k, g)
		}
	}
	eventually(t, 120*time.Second, func() bool { got, _ := handled(p); return len(got) >= 10000 }, "processed %d of 10000", func() int { got, _ := handled(p); return len(got) }())
	got, pids := handled(p)
	done, dups := set(got)
	if len(dups) > 0 {
		t.Errorf("%d tasks processed more than once, e.g. %s", len(dups), dups[0])
	}
	if m := missing(ids, done); len(m) > 0 {
		t.Errorf("%d tasks never processed, e.g. %s", len(m), m[0])
	}
	if len(pids) != 4 {
		t.Errorf("tasks ran in %d processes (%v), want 4", len(pids), pids)
	}
	for pid := range pids {
		n, _ := strconv.Atoi(pid)
		if !contains(kids, n) {
			t.Errorf("pid %d ran tasks but is not one of the pool's children %v", n, kids)
		}
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("pool exit code %d after SIGTERM, want 0", code)
	}
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// A child SIGKILLed mid-task is replaced within a second; its task is
// redelivered and completed.
func TestPoolReplacesKilledChild(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	p := start(t, "forq", env, "pool", "-n", "2", "--ack-wait", "2s")
	ids := enqueueLines(t, env, "sleep", 4, func(int) string { return "1500ms" }, "--record")
	js := b.js(t)
	var victim forq.Result
	eventually(t, 20*time.Second, func() bool {
		for _, r := range results(t, js, ids) {
			if r.State == forq.StateRunning {
				victim = r
				return true
			}
		}
		return false
	}, "no task running")
	before := childPIDs(p.cmd.Process.Pid)
	if err := syscall.Kill(victim.WorkerPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	eventually(t, 5*time.Second, func() bool {
		now := childPIDs(p.cmd.Process.Pid)
		return len(now) == 2 && !contains(now, victim.WorkerPID)
	}, "the killed child was not replaced; children %v, before %v", childPIDs(p.cmd.Process.Pid), before)
	if d := time.Since(killed); d > time.Second {
		t.Errorf("replaced after %s, want within 1s", d)
	}
	eventually(t, 30*time.Second, func() bool { return countState(results(t, js, ids), forq.StateSucceeded) == 4 },
		"not every task succeeded: %v", results(t, js, ids))
	// Its worker's death is not the task's failure (it was attempt 2 before
	// issue 14): the run that completed it is still attempt 1, on its
	// second delivery.
	if r := results(t, js, []string{victim.ID})[victim.ID]; r.Attempts != 1 || r.Run != 2 || r.WorkerPID == victim.WorkerPID {
		t.Errorf("the killed task: attempt %d, run %d in pid %d, want attempt 1, run 2 in another process than %d", r.Attempts, r.Run, r.WorkerPID, victim.WorkerPID)
	}
}

// A child that exits at once every time trips the restart-storm limit.
func TestPoolRestartStorm(t *testing.T) {
	startAt := time.Now()
	code, stdout, stderr := run(t, nil, nil, "pool", "-n", "2", "--max-restarts", "3", "--restart-window", "5s", "--", "sh", "-c", "echo starting; exit 1")
	if code != 1 || !strings.Contains(stderr, "restart storm") || !strings.Contains(stderr, "failed to start 4 times in a row within 5s") {
		t.Errorf("got exit %d, stderr %q; want exit 1 naming the restart storm", code, stderr)
	}
	if d := time.Since(startAt); d > 5*time.Second {
		t.Errorf("the pool stopped after %s, want within the 5s window", d)
	}
	if !strings.Contains(stdout, "] starting") {
		t.Errorf("stdout %q: want the children's output passed through with their prefix", stdout)
	}
}

// SIGTERM with long tasks running: each child finishes its tasks within the
// grace period or has them canceled at its end; the pool exits within
// grace + 1 s and nothing of its process groups survives.
func TestPoolGracefulShutdown(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	p := start(t, "forq", env, "pool", "-n", "2", "--grace", "2s")
	short := enqueueLines(t, env, "sleep", 1, func(int) string { return "700ms" }, "--record")
	long := enqueueLines(t, env, "sleep", 1, func(int) string { return "30s" }, "--record")
	js := b.js(t)
	all := slices.Concat(short, long)
	eventually(t, 20*time.Second, func() bool { return countState(results(t, js, all), forq.StateRunning) == 2 }, "both tasks should be running")
	kids := childPIDs(p.cmd.Process.Pid)
	p.signal(syscall.SIGTERM)
	sent := time.Now()
	code := p.wait(10 * time.Second)
	took := time.Since(sent)
	if took > 3*time.Second {
		t.Errorf("pool exited %s after SIGTERM, want within grace + 1s = 3s", took)
	}
	if code != 0 {
		t.Errorf("pool exit code %d, want 0 (every child drained)", code)
	}
	rs := results(t, js, all)
	if r := rs[short[0]]; r.State != forq.StateSucceeded {
		t.Errorf("the short task is %s, want succeeded within the grace period", r.State)
	}
	if r := rs[long[0]]; r.State != forq.StateQueued {
		t.Errorf("the long task is %s, want queued again for redelivery", r.State)
	}
	if n := streamMsgs(t, js, forq.StreamTasks, ""); n != 1 {
		t.Errorf("%d tasks in the queue, want the long one back", n)
	}
	for _, k := range kids {
		if groupAlive(k) {
			t.Errorf("process group %d still has live processes", k)
		}
	}
}

// A pool that is SIGKILLed leaves no child behind.
func TestPoolKilledLeavesNoOrphan(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	p := start(t, "forq", env, "pool", "-n", "3", "--grace", "30s")
	ids := enqueueLines(t, env, "sleep", 3, func(int) string { return "60s" }, "--record")
	js := b.js(t)
	eventually(t, 20*time.Second, func() bool { return countState(results(t, js, ids), forq.StateRunning) == 3 }, "tasks should be running")
	kids := childPIDs(p.cmd.Process.Pid)
	if len(kids) != 3 {
		t.Fatalf("pool has children %v, want 3", kids)
	}
	p.signal(syscall.SIGKILL)
	p.wait(5 * time.Second)
	time.Sleep(time.Second)
	for _, k := range kids {
		if alive(k) || groupAlive(k) {
			t.Errorf("child %d (or its group) is alive 1s after the pool was SIGKILLed", k)
		}
	}
}

// --max-tasks-per-child 100 over 1,000 tasks: children are replaced as
// they reach 100, and no task is lost or run twice.
func TestPoolRecyclesChildren(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	ids := enqueueLines(t, env, "echo", 1000, strconv.Itoa)
	p := start(t, "forq", env, "--log-level", "debug", "pool", "-n", "2", "--max-tasks-per-child", "100")
	eventually(t, 60*time.Second, func() bool { got, _ := handled(p); return len(got) >= 1000 }, "processed %d of 1000", func() int { got, _ := handled(p); return len(got) }())
	time.Sleep(200 * time.Millisecond)
	got, pids := handled(p)
	done, dups := set(got)
	if len(dups) > 0 || len(missing(ids, done)) > 0 {
		t.Errorf("%d run twice, %d lost; want none", len(dups), len(missing(ids, done)))
	}
	if len(pids) < 10 {
		t.Errorf("tasks ran in %d processes, want at least 10 (100 each)", len(pids))
	}
	for pid, n := range pids {
		if n > 100 {
			t.Errorf("pid %s ran %d tasks, want at most 100", pid, n)
		}
	}
	if strings.Contains(p.stderr(), "restart storm") {
		t.Errorf("recycling tripped the restart-storm limit")
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("pool exit code %d, want 0", code)
	}
}

// --autoscale 1-4 grows to 4 processes with a backlog of slow tasks and
// shrinks back to 1 once idle, with no task lost.
func TestPoolAutoscale(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	p := start(t, "forq", env, "pool", "--autoscale", "1-4", "--scale-interval", "200ms", "--scale-idle", "1s")
	eventually(t, 10*time.Second, func() bool { return len(childPIDs(p.cmd.Process.Pid)) == 1 }, "want 1 child at start")
	ids := enqueueLines(t, env, "sleep", 40, func(int) string { return "300ms" }, "--record")
	most := 0
	js := b.js(t)
	eventually(t, 60*time.Second, func() bool {
		most = max(most, len(childPIDs(p.cmd.Process.Pid)))
		return countState(results(t, js, ids), forq.StateSucceeded) == 40
	}, "not every task succeeded")
	if most != 4 {
		t.Errorf("the pool grew to %d processes, want 4", most)
	}
	eventually(t, 20*time.Second, func() bool { return len(childPIDs(p.cmd.Process.Pid)) == 1 }, "the pool did not shrink back to 1: %v", childPIDs(p.cmd.Process.Pid))
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("pool exit code %d, want 0", code)
	}
}

// forq pool --until-empty: close and join.
func TestPoolUntilEmpty(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	ids := enqueueLines(t, env, "sleep", 20, func(int) string { return "50ms" }, "--record")
	code, _, stderr := run(t, nil, env, "pool", "-n", "2", "--until-empty", "--scale-interval", "100ms")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if n := countState(results(t, b.js(t), ids), forq.StateSucceeded); n != 20 {
		t.Errorf("%d of 20 tasks succeeded when the pool exited, want all", n)
	}
}

var runTask = regexp.MustCompile(`Run task (\d) \((\d+)\)\.\.\.`)

// forq demo pool: four tasks start at once in four processes, the fifth
// waits for a free one.
func TestDemoPool(t *testing.T) {
	code, out, errs := run(t, nil, nil, "demo", "pool")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var starts []string // task numbers in the order they started
	pidOf := map[string]string{}
	firstEnd := -1
	for i, l := range lines {
		if m := runTask.FindStringSubmatch(l); m != nil {
			starts = append(starts, m[1])
			pidOf[m[1]] = m[2]
			if m[1] == "4" && firstEnd < 0 {
				t.Errorf("task 4 started before any task ended:\n%s", out)
			}
		}
		if strings.HasPrefix(l, "Task ") && strings.Contains(l, " runs ") && firstEnd < 0 {
			firstEnd = i
		}
	}
	if len(starts) != 5 {
		t.Fatalf("%d tasks started, want 5:\n%s", len(starts), out)
	}
	first4 := map[string]bool{}
	pids := map[string]bool{}
	for _, s := range starts[:4] {
		first4[s] = true
		pids[pidOf[s]] = true
	}
	if len(first4) != 4 || first4["4"] || len(pids) != 4 {
		t.Errorf("first four starts %v in pids %v: want tasks 0-3 in four distinct processes", starts[:4], pids)
	}
	if !pids[pidOf["4"]] {
		t.Errorf("task 4 ran in pid %s, want one of the four workers %v", pidOf["4"], pids)
	}
	if lines[len(lines)-1] != "All subprocesses done." {
		t.Errorf("last line %q, want %q", lines[len(lines)-1], "All subprocesses done.")
	}
}

// forq demo process: one child process, its PID differs from the parent's.
func TestDemoProcess(t *testing.T) {
	code, out, errs := run(t, nil, nil, "demo", "process")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	m := regexp.MustCompile(`^Parent process (\d+)\.\nChild process will start\.\nRun child process test \((\d+)\)\.\.\.\nChild process end\.\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("output %q: want the tutorial's four lines", out)
	}
	if m[1] == m[2] {
		t.Errorf("child pid %s equals the parent's", m[2])
	}
}

// With --log-format json the pool writes its children's output as JSON
// records naming the child, not as prefixed lines.
func TestPoolJSONOutput(t *testing.T) {
	code, stdout, stderr := run(t, nil, nil, "--log-format", "json", "pool", "-n", "1", "--max-restarts", "1", "--restart-window", "5s", "--", "sh", "-c", "echo out-line; exit 1")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (restart storm); stderr %s", code, stderr)
	}
	found := false
	for _, l := range strings.Split(strings.TrimSpace(stdout+stderr), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			if strings.HasPrefix(l, "forq pool: ") {
				continue // the closing error message
			}
			t.Errorf("line %q is not JSON: %v", l, err)
			continue
		}
		if rec["msg"] == "out-line" && rec["child"] == 0.0 && rec["pid"] != nil && rec["stream"] == "stdout" {
			found = true
		}
	}
	if !found {
		t.Errorf("no JSON record of the child's line in %q", stdout+stderr)
	}
}
