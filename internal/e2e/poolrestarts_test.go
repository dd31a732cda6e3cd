package e2e

import (
	"encoding/json"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq/admin"
)

// statsRestarts returns the restarts of each live worker that forq stats
// --json lists, by PID; nil if forq stats failed.
func statsRestarts(t *testing.T, env []string) map[int]int {
	t.Helper()
	code, out, _ := run(t, nil, env, "stats", "--json")
	var st admin.Stats
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		return nil
	}
	m := map[int]int{}
	for _, w := range st.Workers {
		m[w.PID] = w.Restarts
	}
	return m
}

// readyChildOtherThan waits for the pool's one live ready child to be a
// process other than old, and returns its PID.
func readyChildOtherThan(t *testing.T, p *proc, old int) int {
	t.Helper()
	pid := 0
	eventually(t, 30*time.Second, func() bool {
		if p.exited() {
			t.Fatalf("the pool exited: %v", p.err)
		}
		kids := readyChildren(p)
		if len(kids) != 1 || kids[0] == old {
			return false
		}
		pid = kids[0]
		return true
	}, "the pool has ready children %v, want one other than %d", readyChildren(p), old)
	return pid
}

// A worker of forq pool shows in its status (forq stats --json, the
// dashboard's Workers page) how many times the pool restarted its slot
// after a crash before it: 0 for the first, 1 for the one started after
// its SIGKILL, and still 1 for the one that replaced that one when it
// recycled itself (--max-tasks-per-child 1): a recycle is not a restart.
func TestPoolWorkerStatusShowsRestarts(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	p := start(t, "forq", env, "pool", "-n", "1", "--max-tasks-per-child", "1")

	// wantRestarts waits for forq stats to list worker pid with restarts
	// n (the dead workers' statuses linger up to 15s: they are ignored).
	wantRestarts := func(pid, n int) {
		t.Helper()
		var got map[int]int
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			got = statsRestarts(t, env)
			if r, ok := got[pid]; ok && r == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("forq stats: workers' restarts by PID %v, want worker %d with %d", got, pid, n)
			}
		}
	}

	first := readyChildOtherThan(t, p, 0)
	wantRestarts(first, 0)

	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	second := readyChildOtherThan(t, p, first)
	wantRestarts(second, 1)

	enqueueLines(t, env, "echo", 1, func(int) string { return "recycle" })
	third := readyChildOtherThan(t, p, second)
	wantRestarts(third, 1)
	figuref(t, "pool worker restarts: pid %d 0, after its SIGKILL pid %d 1, after a recycle pid %d 1", first, second, third)

	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("pool exit code %d after SIGTERM, want 0", code)
	}
}
