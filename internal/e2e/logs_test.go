package e2e

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// jsonLines parses every complete line of s as a JSON object; a line that
// is not one fails the test.
func jsonLines(t *testing.T, what, s string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for line := range strings.Lines(s) {
		if !strings.HasSuffix(line, "\n") {
			break // still being written
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: a line that is not a JSON object: %q: %v", what, line, err)
		}
		recs = append(recs, m)
	}
	return recs
}

// A pool with --log-format json passes on each worker's JSON records as
// records of their own: a task that used up its attempts is logged at
// level ERROR, as the worker logged it, with its fields and the worker's
// slot (child) and pid; its retry delay is a duration as people write one.
// Every line of the pool's stderr is a JSON object.
func TestPoolJSONLogsKeepChildLevels(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	pool := start(t, "forq", env, "--log-format", "json", "pool", "-n", "2", "-q", "logs",
		"--allow-exec", "--retry-base", "50ms")
	id := enqueueExec(t, env, []string{"--queue", "logs", "--max-attempts", "2"}, "sh", "-c", "exit 3")

	find := func(msg string) map[string]any {
		for _, r := range jsonLines(t, "pool stderr", pool.stderr()) {
			if r["msg"] == msg {
				return r
			}
		}
		return nil
	}
	var dead map[string]any
	eventually(t, 30*time.Second, func() bool { dead = find("task dead-lettered"); return dead != nil },
		"no \"task dead-lettered\" record on the pool's stderr:\n%s", tail(pool.stderr(), 3000))
	t.Logf("the worker's record, as the pool wrote it: %v", dead)
	if dead["level"] != "ERROR" {
		t.Errorf("task dead-lettered: level %v, want ERROR", dead["level"])
	}
	slot, ok := dead["child"].(float64)
	if !ok || slot < 0 || slot > 1 {
		t.Errorf("task dead-lettered: child %v, want the worker's slot, 0 or 1", dead["child"])
	}
	pid, ok := dead["pid"].(float64)
	workers := descendants(pool.cmd.Process.Pid)
	if !ok || !slices.ContainsFunc(workers, func(p procEntry) bool { return p.pid == int(pid) && p.ppid == pool.cmd.Process.Pid }) {
		t.Errorf("task dead-lettered: pid %v, want one of the pool's workers %v", dead["pid"], workers)
	}
	if err, _ := dead["err"].(string); !strings.Contains(err, "exit status 3") {
		t.Errorf("task dead-lettered: err %q, want the command's exit status 3", err)
	}
	if _, wrapped := dead["stream"]; wrapped {
		t.Errorf("task dead-lettered: a stream field: the worker's record was wrapped as a line")
	}
	if !strings.Contains(pool.stderr(), id) {
		t.Errorf("the pool's log never names task %s", id)
	}

	retry := find("task failed; will retry")
	if retry == nil {
		t.Fatalf("no \"task failed; will retry\" record:\n%s", tail(pool.stderr(), 3000))
	}
	if retry["level"] != "WARN" {
		t.Errorf("task failed; will retry: level %v, want WARN", retry["level"])
	}
	in, _ := retry["retry_in"].(string)
	if d, err := time.ParseDuration(in); err != nil || d <= 0 {
		t.Errorf("retry_in %v, want a duration such as \"40ms\"", retry["retry_in"])
	}

	pool.signal(syscall.SIGTERM)
	if code := pool.wait(30 * time.Second); code != 0 {
		t.Errorf("pool exit code %d, want 0", code)
	}
	jsonLines(t, "pool stderr", pool.stderr())
	if out := pool.stdout(); out != "" {
		t.Errorf("the pool wrote to stdout: %q", out)
	}
}

// With --log-format json the error that ends a command is one JSON record
// at level ERROR with the error and the exit code: a runtime failure (exit
// 1) and a refused flag (exit 2) alike. In text it stays a line.
func TestFatalErrorFollowsLogFormat(t *testing.T) {
	url := "nats://127.0.0.1:" + strconv.Itoa(freePort(t)) // nobody listens
	for _, c := range []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"unreachable broker", []string{"--log-format", "json", "enqueue", "echo", "--url", url, "--connect-timeout", "300ms"}, 1, "cannot reach the broker at " + url},
		{"bad flag value", []string{"--log-format", "json", "pool", "-n", "-1"}, 2, "--workers -1"},
		{"json from the environment", []string{"stats", "--url", url, "--connect-timeout", "300ms"}, 1, "cannot reach the broker"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errs := run(t, nil, []string{"FORQ_LOG_FORMAT=json"}, c.args...)
			if code != c.code {
				t.Errorf("exit code %d, want %d; stderr %q", code, c.code, errs)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			recs := jsonLines(t, "stderr", errs)
			if len(recs) != 1 || strings.Count(errs, "\n") != 1 {
				t.Fatalf("stderr %q, want one JSON line", errs)
			}
			r := recs[0]
			if r["level"] != "ERROR" || r["exit_code"] != float64(c.code) || !strings.Contains(r["err"].(string), c.err) {
				t.Errorf("record %v, want level ERROR, exit_code %d and err naming %q", r, c.code, c.err)
			}
			if msg, _ := r["msg"].(string); !strings.HasPrefix(msg, "forq ") {
				t.Errorf("msg %q, want it to name the command", msg)
			}
		})
	}
	t.Run("text", func(t *testing.T) {
		code, _, errs := run(t, nil, nil, "enqueue", "echo", "--url", url, "--connect-timeout", "300ms")
		if code != 1 || !strings.HasPrefix(errs, "forq enqueue: cannot reach the broker at "+url) {
			t.Errorf("exit %d, stderr %q; want 1 and a line \"forq enqueue: cannot reach ...\"", code, errs)
		}
	})
}
