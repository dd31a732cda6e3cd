package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// browsed is a task as "forq tasks --json" prints it (what the tests
// check of it).
type browsed struct {
	ID          string    `json:"id"`
	Type        string    `json:"type"`
	State       string    `json:"state"`
	Priority    string    `json:"priority"`
	Attempts    int       `json:"attempts"`
	MaxAttempts int       `json:"max_attempts"`
	Enqueued    time.Time `json:"enqueued"`
	Due         time.Time `json:"due"`
	Preview     []byte    `json:"preview"`
	Worker      *struct {
		Host string `json:"host"`
		PID  int    `json:"pid"`
	} `json:"worker"`
}

// browse runs "forq tasks --json" with args and returns what it lists.
func browse(t *testing.T, env []string, args ...string) []browsed {
	t.Helper()
	code, out, errs := run(t, nil, env, append([]string{"tasks", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("forq tasks %v: exit %d: %s", args, code, errs)
	}
	var ts []browsed
	if err := json.Unmarshal([]byte(out), &ts); err != nil {
		t.Fatalf("forq tasks --json: %v: %q", err, out)
	}
	return ts
}

// summary lists tasks as "<state>:<id>:<type>:<priority>".
func summary(ts []browsed) []string {
	out := make([]string, len(ts))
	for i, x := range ts {
		out[i] = x.State + ":" + x.ID + ":" + x.Type + ":" + x.Priority
	}
	return out
}

// enqueueTask runs "forq enqueue" with args and returns the task's ID.
func enqueueTask(t *testing.T, env []string, args ...string) string {
	t.Helper()
	code, out, errs := run(t, nil, env, append([]string{"enqueue"}, args...)...)
	if code != 0 {
		t.Fatalf("forq enqueue %v: exit %d: %s", args, code, errs)
	}
	return strings.TrimSpace(out)
}

// The task browser lists queued, scheduled and running tasks that match
// what was enqueued, with the worker that runs each: a "forq work"
// process runs two long tasks; the queue, paused, keeps three more (two
// levels, two types, one payload with a terminal escape), and one is
// delayed.
func TestTaskBrowserListsWhatWasEnqueued(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	w := start(t, "forq", env, "work", "--queue", "browse", "--concurrency", "2", "--grace", "100ms")
	run1 := enqueueTask(t, env, "sleep", "--queue", "browse", "--payload", "1m")
	run2 := enqueueTask(t, env, "sleep", "--queue", "browse", "--payload", "1m")
	eventually(t, 30*time.Second, func() bool {
		return len(browse(t, env, "--queue", "browse", "--state", "running")) == 2
	}, "forq tasks never listed the two sleeping tasks as running")
	if code, _, errs := run(t, nil, env, "pause", "browse"); code != 0 {
		t.Fatalf("pause: exit %d: %s", code, errs)
	}
	normal := enqueueTask(t, env, "echo", "--queue", "browse", "--payload", "hello \x1b[31mred\x1b[0m")
	high := enqueueTask(t, env, "sleep", "--queue", "browse", "--priority", "high", "--payload", "2s")
	low := enqueueTask(t, env, "echo", "--queue", "browse", "--priority", "low", "--payload", strings.Repeat("x", 100), "--max-attempts", "5")
	later := enqueueTask(t, env, "echo", "--queue", "browse", "--in", "1h", "--payload", "later")

	ts := browse(t, env, "--queue", "browse")
	running := summary(ts[:2])
	slices.Sort(running)
	wantRunning := []string{"running:" + run1 + ":sleep:normal", "running:" + run2 + ":sleep:normal"}
	slices.Sort(wantRunning)
	if !slices.Equal(running, wantRunning) {
		t.Errorf("running: %v, want %v", running, wantRunning)
	}
	want := []string{"queued:" + high + ":sleep:high", "queued:" + normal + ":echo:normal", "queued:" + low + ":echo:low", "scheduled:" + later + ":echo:normal"}
	if got := summary(ts[2:]); !slices.Equal(got, want) {
		t.Errorf("the others: %v, want %v", got, want)
	}
	for _, x := range ts[:2] {
		if x.Worker == nil || x.Worker.PID != w.cmd.Process.Pid || x.Worker.Host != host || x.Attempts != 1 {
			t.Errorf("running task %s: worker %+v, attempts %d; want pid %d on %s, attempt 1", x.ID, x.Worker, x.Attempts, w.cmd.Process.Pid, host)
		}
	}
	for _, x := range ts[2:] {
		if x.Worker != nil || x.Attempts != 0 || x.Enqueued.IsZero() {
			t.Errorf("task %s (%s): worker %+v, attempts %d, enqueued %s; want no worker, no attempt, a time", x.ID, x.State, x.Worker, x.Attempts, x.Enqueued)
		}
	}
	if x := ts[4]; x.MaxAttempts != 5 || len(x.Preview) != 40 {
		t.Errorf("low task: max attempts %d, preview of %d bytes; want 5 and 40 (--preview's default)", x.MaxAttempts, len(x.Preview))
	}
	if d := time.Until(ts[5].Due); d < 59*time.Minute || d > time.Hour {
		t.Errorf("scheduled task due in %s, want about 1h", d)
	}

	// Filters, by state and by type.
	if got := summary(browse(t, env, "--queue", "browse", "--state", "queued,scheduled", "--type", "echo")); !slices.Equal(got, []string{want[1], want[2], want[3]}) {
		t.Errorf("--state queued,scheduled --type echo: %v, want %v", got, []string{want[1], want[2], want[3]})
	}
	if got := summary(browse(t, env, "--queue", "browse", "--type", "sleep", "--state", "queued")); !slices.Equal(got, want[:1]) {
		t.Errorf("--type sleep --state queued: %v, want %v", got, want[:1])
	}

	browserTable(t, env, fmt.Sprintf("%s:%d", host, w.cmd.Process.Pid), run1, run2)
	w.signal(syscall.SIGTERM)
	w.wait(30 * time.Second)
}

// browserTable checks the table of "forq tasks" of
// TestTaskBrowserListsWhatWasEnqueued: the worker of each running task, a
// payload's escape shown, not sent to the terminal.
func browserTable(t *testing.T, env []string, worker string, running ...string) {
	t.Helper()
	code, out, errs := run(t, nil, env, "tasks", "--queue", "browse")
	if code != 0 {
		t.Fatalf("forq tasks: exit %d: %s", code, errs)
	}
	for _, id := range running {
		if !regexp.MustCompile(`(?m)^` + id + `\s+sleep\s+running\s+normal\s+1/3\s+\S+\s+-\s+` + regexp.QuoteMeta(worker) + `\s`).MatchString(out) {
			t.Errorf("forq tasks: no line of %s running on %s:\n%s", id, worker, out)
		}
	}
	if strings.Contains(out, "\x1b") || !strings.Contains(out, `hello \x1b[31mred\x1b[0m`) {
		t.Errorf("forq tasks: the payload's escape is not shown escaped:\n%s", out)
	}
	if !strings.HasPrefix(out, "ID") || !strings.Contains(out, "WORKER") || !strings.Contains(out, "AGE") {
		t.Errorf("forq tasks: no header with WORKER and AGE:\n%s", out)
	}
	code, _, errs = run(t, nil, env, "tasks", "--queue", "browse", "--state", "done")
	if code != 2 || !strings.Contains(errs, `"done"`) {
		t.Errorf("forq tasks --state done: exit %d, %q; want 2 naming it", code, errs)
	}
}

// queueLine is a queue of "forq stats --json".
type queueLine struct {
	Queue    string            `json:"queue"`
	Queued   uint64            `json:"queued"`
	ByPrio   map[string]uint64 `json:"queued_by_priority"`
	Running  int               `json:"running"`
	Retrying int               `json:"retrying"`
	Unacked  int               `json:"unacked"`
}

// statsOf runs "forq stats --json --queue q" and returns q's line and the
// number of workers listed.
func statsOf(t *testing.T, env []string, q string) (queueLine, int) {
	t.Helper()
	code, out, errs := run(t, nil, env, "stats", "--json", "--queue", q)
	if code != 0 {
		t.Fatalf("forq stats: exit %d: %s", code, errs)
	}
	var st struct {
		Queues  []queueLine       `json:"queues"`
		Workers []json.RawMessage `json:"workers"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Queues) != 1 {
		t.Fatalf("forq stats --json: %v: %q", err, out)
	}
	return st.Queues[0], len(st.Workers)
}

// forq stats shows a queue that has tasks and no consumer, and shows no
// running tasks after a graceful hand-back: a worker stopped with SIGTERM
// hands its tasks back (a nak, which the broker counts as delivered and
// not acknowledged until it redelivers them), and stats calls them
// retrying, not running.
func TestStatsQueueWithoutConsumerAndHandBack(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	for range 3 {
		enqueueTask(t, env, "sleep", "--queue", "reports", "--payload", "1m")
	}
	enqueueTask(t, env, "sleep", "--queue", "reports", "--payload", "1m", "--priority", "high")
	q, _ := statsOf(t, env, "reports")
	if q.Queued != 4 || q.ByPrio["high"] != 1 || q.ByPrio["normal"] != 3 || q.Running != 0 {
		t.Errorf("before any worker: %+v; want 4 queued (1 high, 3 normal), none running", q)
	}
	code, out, errs := run(t, nil, env, "stats")
	if code != 0 || !regexp.MustCompile(`(?m)^reports\s+4 \(1/3/0\)\s+0\s+0\s`).MatchString(out) {
		t.Errorf("forq stats (table) before any worker: exit %d, %q %q; want reports with 4 (1/3/0) queued", code, out, errs)
	}

	w := start(t, "forq", env, "work", "--queue", "reports", "--concurrency", "4", "--grace", "200ms")
	eventually(t, 30*time.Second, func() bool {
		q, n := statsOf(t, env, "reports")
		return q.Running == 4 && q.Queued == 0 && n == 1
	}, "forq stats never showed the 4 tasks running on the worker")
	w.signal(syscall.SIGTERM)
	if code := w.wait(30 * time.Second); code != 0 {
		t.Errorf("forq work: exit %d after SIGTERM; stderr %s", code, tail(w.stderr(), 2000))
	}
	q, workers := statsOf(t, env, "reports")
	figuref(t, "after the hand-back: queued %d, running %d, retrying %d, unacked %d, workers %d", q.Queued, q.Running, q.Retrying, q.Unacked, workers)
	if q.Running != 0 || workers != 0 || q.Queued+uint64(q.Retrying) != 4 || q.Unacked != q.Retrying {
		t.Errorf("after the hand-back: %+v, %d workers; want none running, no worker, the 4 tasks queued or retrying", q, workers)
	}
	code, out, _ = run(t, nil, env, "stats", "--queue", "reports")
	if code != 0 || !regexp.MustCompile(`(?m)^reports\s+\d+ \(\d+/\d+/0\)\s+0\s`).MatchString(out) || !strings.Contains(out, "(no workers)") {
		t.Errorf("forq stats (table) after the hand-back: exit %d, %q; want RUNNING 0 and no workers", code, out)
	}
}

// forq result shows the history of a task's failed attempts: a task that
// fails twice, then succeeds, shows both errors, with their attempt, time
// and worker.
func TestResultShowsFailedAttempts(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	w := start(t, "forq", env, "work", "--allow-exec", "--retry-base", "100ms", "--retry-max", "200ms")
	count := t.TempDir() + "/count"
	id := enqueueExec(t, env, []string{"--max-attempts", "3"}, "sh", "-c",
		`n=$(( $(cat "$0" 2>/dev/null || echo 0) + 1 )); echo $n > "$0"; [ $n -ge 3 ] || { echo "boom $n" >&2; exit 1; }`, count)
	code, out, errs := run(t, nil, env, "result", "--wait", "--wait-timeout", "30s", id)
	if code != 0 {
		t.Fatalf("forq result --wait: exit %d: %s%s", code, out, errs)
	}
	host, _ := os.Hostname()
	if !strings.Contains(out, "state:     succeeded") || !strings.Contains(out, "attempts:  3") {
		t.Errorf("forq result: %q; want succeeded on attempt 3", out)
	}
	for n := 1; n <= 2; n++ {
		re := regexp.MustCompile(`(?m)^  #` + strconv.Itoa(n) + `  \S+  pid ` + strconv.Itoa(w.cmd.Process.Pid) + ` on ` + regexp.QuoteMeta(host) + `: .*boom ` + strconv.Itoa(n))
		if !re.MatchString(out) {
			t.Errorf("forq result: no line of failed attempt %d with its worker and error:\n%s", n, out)
		}
	}
	if strings.Contains(out, "#3") {
		t.Errorf("forq result: the successful attempt is listed as failed:\n%s", out)
	}
	code, out, _ = run(t, nil, env, "result", "--json", id)
	var r struct {
		History []struct {
			Attempt int       `json:"attempt"`
			Host    string    `json:"host"`
			PID     int       `json:"pid"`
			At      time.Time `json:"at"`
			Error   string    `json:"error"`
		} `json:"history"`
	}
	if err := json.Unmarshal([]byte(out), &r); code != 0 || err != nil || len(r.History) != 2 || r.History[0].Attempt != 1 || r.History[1].Attempt != 2 ||
		r.History[0].At.IsZero() || !r.History[0].At.Before(r.History[1].At) {
		t.Errorf("forq result --json: exit %d, %v: %s; want the history of attempts 1 and 2, in order", code, err, out)
	}
}
