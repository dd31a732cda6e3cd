package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
)

// 100 sleep tasks sharing one lock key, run by a pool of 4 worker
// processes with 2 slots each, never overlap: sorted by start, each starts
// after the one before finished.
func TestLockTasksNeverOverlapAcrossProcesses(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	ids := enqueueLines(t, env, "sleep", 100, func(int) string { return "20ms" }, "--lock", "K", "--record", "--max-attempts", "1")
	if len(ids) != 100 {
		t.Fatalf("enqueued %d tasks", len(ids))
	}
	p := start(t, "forq", env, "pool", "-n", "4", "--concurrency", "2")
	js := b.js(t)
	eventually(t, 90*time.Second, func() bool { return countState(results(t, js, ids), forq.StateSucceeded) == 100 },
		"%d of 100 tasks succeeded", countState(results(t, js, ids), forq.StateSucceeded))
	rs := results(t, js, ids)
	list := make([]forq.Result, 0, len(rs))
	pids := map[int]int{}
	for _, r := range rs {
		list = append(list, r)
		pids[r.WorkerPID]++
		if r.Attempts != 1 {
			t.Errorf("task %s: attempts %d, want 1 (waiting for the lock is no attempt)", r.ID, r.Attempts)
		}
	}
	slices.SortFunc(list, func(a, b forq.Result) int { return a.StartedAt.Compare(b.StartedAt) })
	for i := 1; i < len(list); i++ {
		if list[i].StartedAt.Before(list[i-1].FinishedAt) {
			t.Errorf("task %s (pid %d) started at %s, before task %s (pid %d) finished at %s",
				list[i].ID, list[i].WorkerPID, list[i].StartedAt.Format(time.RFC3339Nano),
				list[i-1].ID, list[i-1].WorkerPID, list[i-1].FinishedAt.Format(time.RFC3339Nano))
		}
	}
	t.Logf("100 locked tasks ran in %s across pids %v", list[len(list)-1].FinishedAt.Sub(list[0].StartedAt).Round(time.Millisecond), pids)
	if len(pids) < 2 {
		t.Errorf("tasks ran in %d worker processes, want several: %v", len(pids), pids)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("pool exit code %d", code)
	}
}

// A worker SIGKILLed while it holds a lock leaves it to expire: another
// worker runs the next task with the key within the TTL and a margin.
func TestLockOfKilledHolderExpires(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	const ttl = 2 * time.Second
	holder := start(t, "forq", env, "work", "--allow-exec", "--lock-ttl", ttl.String())
	// The holder's task works 60 s on its first run only. Once the holder
	// is dead the broker redelivers it (after the ack wait), and it may
	// well take the expired lock before the next task does: both tasks
	// wait for the same lock, and neither has a claim to go first. Its
	// second run ends at once, so that the next task runs either way.
	marker := filepath.Join(t.TempDir(), "ran")
	spec, _ := json.Marshal(forq.ExecSpec{Argv: []string{"sh", "-c", `[ -e "$0" ] && exit 0; touch "$0"; exec sleep 60`, marker}})
	_, long := enqueueOne(t, env, "exec", string(spec), "--lock", "K", "--record")
	js := b.js(t)
	eventually(t, 10*time.Second, func() bool {
		r, ok := results(t, js, []string{long})[long]
		return ok && r.State == forq.StateRunning && r.WorkerPID == holder.cmd.Process.Pid
	}, "the long task is not running on the holder")
	other := start(t, "forq", env, "work", "--allow-exec", "--lock-ttl", ttl.String())
	_, next := enqueueOne(t, env, "sleep", "10ms", "--lock", "K", "--record")
	time.Sleep(time.Second)
	if rs := results(t, js, []string{next}); countNotStarted(rs, []string{next}) != 1 {
		t.Fatalf("next task %s while the holder lives, want not started (no record, or queued)", rs[next].State)
	}
	holder.signal(syscall.SIGKILL)
	killed := time.Now()
	eventually(t, 20*time.Second, func() bool { return results(t, js, []string{next})[next].State == forq.StateSucceeded },
		"the next task did not run after the holder died: %+v", results(t, js, []string{next})[next])
	r := results(t, js, []string{next})[next]
	took := r.StartedAt.Sub(killed)
	figuref(t, "next task started %s after the holder was killed (TTL %s)", took.Round(time.Millisecond), ttl)
	// The lock expires a TTL after the holder's last refresh, the broker
	// removes it within about a second more, and the waiting task comes
	// back within MaxLockWait (1s): about TTL + 2s, or a little more when
	// the holder's redelivered task took the lock first. The bound allows
	// for a loaded machine and still fails a lock that outlives its holder
	// for good (the holder's task works 60s).
	if limit := ttl + 10*time.Second; took > limit {
		t.Errorf("next task started %s after the kill, want within TTL %s + 10s", took, ttl)
	}
	if r.WorkerPID != other.cmd.Process.Pid {
		t.Errorf("next task ran on pid %d, want the other worker %d", r.WorkerPID, other.cmd.Process.Pid)
	}
}

// Tasks with different lock keys run in parallel.
func TestLockDifferentKeysRunInParallel(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	var ids []string
	for i := range 4 {
		_, id := enqueueOne(t, env, "sleep", "500ms", "--lock", fmt.Sprintf("key-%d", i), "--record")
		ids = append(ids, id)
	}
	start(t, "forq", env, "work", "--concurrency", "4")
	js := b.js(t)
	eventually(t, 20*time.Second, func() bool { return countState(results(t, js, ids), forq.StateSucceeded) == 4 }, "not all succeeded")
	rs := results(t, js, ids)
	var first, last time.Time
	for _, r := range rs {
		if first.IsZero() || r.FinishedAt.Before(first) {
			first = r.FinishedAt
		}
		if r.StartedAt.After(last) {
			last = r.StartedAt
		}
	}
	if !last.Before(first) {
		t.Errorf("tasks with different keys did not overlap: last start %s, first finish %s", last, first)
	}
}

// 50 enqueues with one unique key, in 50 processes at once, make one task;
// all print its ID. Once it has run, the key makes a new task.
func TestUniqueEnqueuesAcrossProcesses(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	js := b.js(t)
	// Declare the topology first, so that 50 processes do not race to.
	enqueueOne(t, env, "echo", "warm-up")
	st, err := js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := st.Info(t.Context())
	ids := make([]string, 50)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			code, out, errs := run(t, nil, env, "enqueue", "sleep", "--payload", "100ms", "--unique", "nightly-report", "--record")
			if code != 0 {
				t.Errorf("enqueue %d: exit %d: %s", i, code, errs)
				return
			}
			ids[i] = strings.TrimSpace(out)
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id == "" || id != ids[0] {
			t.Fatalf("the 50 enqueues printed different IDs: %v", ids)
		}
	}
	after, _ := st.Info(t.Context())
	if n := after.State.Msgs - before.State.Msgs; n != 1 {
		t.Fatalf("%d new messages in %s, want 1", n, forq.StreamTasks)
	}
	start(t, "forq", env, "work")
	if code, _, errs := run(t, nil, env, "result", "--wait", "--wait-timeout", "20s", ids[0]); code != 0 {
		t.Fatalf("result: exit %d: %s", code, errs)
	}
	_, id := enqueueOne(t, env, "sleep", "10ms", "--unique", "nightly-report")
	if id == ids[0] {
		t.Fatalf("after the task ran, the unique key still gave its ID %s", id)
	}
}

// enqueueOne enqueues one task and returns forq's stderr and the task ID.
func enqueueOne(t *testing.T, env []string, typ, payload string, extra ...string) (string, string) {
	t.Helper()
	code, out, errs := run(t, nil, env, append([]string{"enqueue", typ, "--payload", payload}, extra...)...)
	if code != 0 {
		t.Fatalf("enqueue: exit %d: %s", code, errs)
	}
	return errs, strings.TrimSpace(out)
}
