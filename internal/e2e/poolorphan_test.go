package e2e

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A worker SIGKILLed on its own (the OOM killer, an operator), while its
// pool lives, runs none of its abort path: its exec command (a shell that
// ignores SIGTERM) dies of its parent-death SIGKILL, but the command's own
// child (sleep, which inherits the ignored SIGTERM) is orphaned. The pool
// is a child subreaper: it gets the orphan, kills it (SIGTERM, then SIGKILL
// 200ms later) and reaps it. Within 1s of each kill neither the shell nor
// its sleep is alive or a zombie, the pool has no zombie child, and it
// runs on with a new worker in place of the killed one.
func TestPoolKillsWhatAKilledWorkerLeft(t *testing.T) {
	const rounds = 5
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	// Room for the killed tasks when they run again.
	p := start(t, "forq", env, "pool", "-n", "2", "--concurrency", "8", "--allow-exec")
	pool := p.cmd.Process.Pid
	dir := t.TempDir()
	// The shell writes its PID, then its sleep's.
	script := `trap '' TERM; echo $$ >> "$0"; sleep 30 & echo $! >> "$0"; wait`
	var gone []time.Duration
	for round := range rounds {
		pidFile := filepath.Join(dir, "pids-"+strconv.Itoa(round))
		enqueueExec(t, env, nil, "sh", "-c", script, pidFile)
		var pids []int
		eventually(t, 20*time.Second, func() bool { pids = readPIDs(t, pidFile); return len(pids) == 2 },
			"round %d: the command did not start its sleep", round)
		shell, ok1 := readProc(pids[0])
		sleep, ok2 := readProc(pids[1])
		if !ok1 || !ok2 {
			t.Fatalf("round %d: shell %d or sleep %d already gone", round, pids[0], pids[1])
		}
		worker, ok := readProc(shell.ppid)
		if !ok || worker.ppid != pool {
			t.Fatalf("round %d: the shell's parent %d is not a worker of the pool %d", round, shell.ppid, pool)
		}
		if err := syscall.Kill(worker.pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		left := func() []string {
			var out []string
			for _, e := range []procEntry{worker, shell, sleep} {
				if now, ok := readProc(e.pid); ok && now.start == e.start {
					out = append(out, fmt.Sprintf("%d (state %s, parent %d)", e.pid, now.state, now.ppid))
				}
			}
			if z := zombies(pool); len(z) > 0 {
				out = append(out, fmt.Sprintf("zombies of the pool %v", z))
			}
			return out
		}
		for len(left()) > 0 && time.Since(killed) < 2*time.Second {
			time.Sleep(5 * time.Millisecond)
		}
		took := time.Since(killed)
		gone = append(gone, took)
		if l := left(); len(l) > 0 || took > time.Second {
			t.Fatalf("round %d: %v after worker %d was SIGKILLed, still there: %v", round,
				took.Round(time.Millisecond), worker.pid, l)
		}
		if !alive(pool) {
			t.Fatalf("round %d: the pool exited: %s", round, tail(p.stderr(), 2000))
		}
		eventually(t, 10*time.Second, func() bool { return len(readyChildren(p)) == 2 },
			"round %d: the killed worker was not replaced", round)
	}
	figuref(t, "%d workers SIGKILLed under an exec task: worker, shell and sleep gone, none a zombie, after %s",
		rounds, spread(gone))
	if n := strings.Count(p.stderr(), `msg="killing what an exited child left running"`); n < rounds {
		t.Errorf("the pool logged %d kills of what a worker left, want %d", n, rounds)
	}
}

// The pool's /readyz counts ready workers, not running ones: a command of
// the user's that never writes to FORQ_READY_FD is ready only after
// --ready-timeout, and /readyz and forq_pool_children_ready say so.
func TestPoolReadyzCountsReadyWorkers(t *testing.T) {
	port := freePort(t)
	start(t, "forq", nil, "pool", "-n", "2", "--metrics-port", strconv.Itoa(port), "--ready-timeout", "3s",
		"--", "sleep", "1000")
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	started := time.Now()
	var body string
	eventually(t, 10*time.Second, func() bool {
		code, b := get(base + "/readyz")
		body = b
		return code == http.StatusServiceUnavailable && strings.Contains(b, "0 of 2 workers ready (2 running)")
	}, "/readyz before the ready timeout: %q, want 503 saying 0 of 2 workers ready (2 running)", lazy(func() string { return body }))
	fams, err := scrape(t, base+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if got, running := value(fams, "forq_pool_children_ready", nil), value(fams, "forq_pool_children", nil); got != 0 || running != 2 {
		t.Errorf("before the ready timeout: forq_pool_children_ready %v, forq_pool_children %v; want 0 and 2", got, running)
	}
	eventually(t, 10*time.Second, func() bool { return status(base+"/readyz") == http.StatusOK }, "/readyz never OK")
	figuref(t, "/readyz 503 %q, then 200 %v after start (--ready-timeout 3s)", strings.TrimSpace(body),
		time.Since(started).Round(100*time.Millisecond))
	if fams, err = scrape(t, base+"/metrics"); err != nil {
		t.Fatal(err)
	}
	if got := value(fams, "forq_pool_children_ready", nil); got != 2 {
		t.Errorf("after the ready timeout: forq_pool_children_ready %v, want 2", got)
	}
}

// A command that exits 100 (recycle) at once every time is not restarted
// in a tight loop: each recycle before the worker is ready, sooner than its
// restart delay after its start, waits out the rest of the delay, which
// doubles from 100ms. The pool keeps running: a recycle is no crash.
func TestPoolRecycleAtOnceBacksOff(t *testing.T) {
	const run = 3 * time.Second
	p := start(t, "forq", nil, "pool", "-n", "1", "--", "sh", "-c", "exit 100")
	time.Sleep(run)
	if !alive(p.cmd.Process.Pid) {
		t.Fatalf("the pool exited: %s", tail(p.stderr(), 2000))
	}
	starts := strings.Count(p.stderr(), `msg="child started"`)
	delayed := strings.Count(p.stderr(), `msg="child asked to be recycled before it was ready, replacing it after its back-off"`)
	figuref(t, "in %v: %d starts of a command that exits 100 at once, %d recycles delayed", run, starts, delayed)
	// Delays of 100-150ms, 200-300, 400-600, 800-1200, 1600-2400ms: at
	// most 6 starts in 3s; without the guard, hundreds.
	if starts < 3 || starts > 8 {
		t.Errorf("starts in %v: got %d, want 3 to 8", run, starts)
	}
	if delayed < starts-1 {
		t.Errorf("delayed recycles: got %d, want at least %d", delayed, starts-1)
	}
}

// get returns the status code and body of url, or 0.
func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
