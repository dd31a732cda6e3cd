package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// execResult reads the exec outcome recorded for id.
func execResult(t *testing.T, js jetstream.JetStream, id string) (forq.Result, forq.ExecResult) {
	t.Helper()
	r := results(t, js, []string{id})[id]
	var x forq.ExecResult
	if len(r.Result) > 0 {
		if err := json.Unmarshal(r.Result, &x); err != nil {
			t.Fatalf("result of %s: %v", id, err)
		}
	}
	return r, x
}

// enqueueExec enqueues an exec task of argv with extra enqueue flags and
// returns its ID.
func enqueueExec(t *testing.T, env []string, flags []string, argv ...string) string {
	t.Helper()
	args := append(append([]string{"enqueue", "--exec", "--record"}, flags...), "--")
	code, out, errs := run(t, nil, env, append(args, argv...)...)
	if code != 0 {
		t.Fatalf("enqueue --exec %v: exit %d: %s", argv, code, errs)
	}
	return strings.TrimSpace(out)
}

func readPIDs(t *testing.T, file string) []int {
	t.Helper()
	b, _ := os.ReadFile(file)
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
}

// An exec task's stdout, stderr tail, exit code and duration are recorded
// and returned to a --wait'ing producer, which exits with the command's
// exit code; failures retry, exit 3 ends dead with its code, a signal is
// named.
func TestExecOutcomes(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	start(t, "forq", env, "work", "--allow-exec", "--concurrency", "4", "--retry-base", "200ms")
	js := b.js(t)

	t.Run("success", func(t *testing.T) {
		code, out, errs := run(t, nil, env, "enqueue", "--exec", "--wait", "--", "sh", "-c", "echo hello from $0; echo careful >&2; sleep 0.2", "exec-task")
		if code != 0 || out != "hello from exec-task\n" {
			t.Fatalf("got exit %d, stdout %q, stderr %q; want 0 and the command's output", code, out, errs)
		}
		id := enqueueExec(t, env, nil, "sh", "-c", "echo out; echo err >&2; sleep 0.2")
		eventually(t, 20*time.Second, func() bool { r, _ := execResult(t, js, id); return r.State == forq.StateSucceeded }, "exec task did not succeed")
		r, x := execResult(t, js, id)
		if x.ExitCode != 0 || x.Stdout != "out\n" || x.StderrTail != "err\n" || x.Duration < 200*time.Millisecond || r.Attempts != 1 {
			t.Errorf("got %+v (attempts %d), want exit 0, stdout \"out\\n\", stderr \"err\\n\", duration ≥ 200ms", x, r.Attempts)
		}
		code, out, _ = run(t, nil, env, "result", id)
		for _, want := range []string{"state:     succeeded", "exit code: 0", "stdout:\n  out", "stderr (tail):\n  err"} {
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("forq result: exit %d, %q; want it to contain %q", code, out, want)
			}
		}
	})

	t.Run("exit code passes through --wait", func(t *testing.T) {
		code, out, errs := run(t, nil, env, "enqueue", "--exec", "--wait", "--max-attempts", "1", "--", "sh", "-c", "echo partial; echo it broke >&2; exit 3")
		if code != 3 || out != "partial\n" || !strings.Contains(errs, "it broke") || !strings.Contains(errs, "exit status 3") {
			t.Errorf("got exit %d, stdout %q, stderr %q; want 3, the output, and the stderr tail", code, out, errs)
		}
	})

	t.Run("exit 75 is retried with back-off", func(t *testing.T) {
		runs := filepath.Join(t.TempDir(), "runs")
		id := enqueueExec(t, env, []string{"--max-attempts", "3"}, "sh", "-c", `date +%s%N >> "$0"; exit 75`, runs)
		eventually(t, 30*time.Second, func() bool { r, _ := execResult(t, js, id); return r.State == forq.StateDead }, "exit-75 task did not end dead")
		stamps := readPIDs(t, runs) // nanosecond stamps
		if len(stamps) != 3 {
			t.Fatalf("ran %d times, want 3", len(stamps))
		}
		// Back-off before attempt n+1 is 200ms·2^(n-1) with jitter in [½, 1]×.
		for i, least := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond} {
			if gap := time.Duration(stamps[i+1] - stamps[i]); gap < least {
				t.Errorf("attempt %d came %s after attempt %d, want at least %s", i+2, gap, i+1, least)
			}
		}
	})

	t.Run("exit 3 ends in FORQ_DEAD with its code", func(t *testing.T) {
		id := enqueueExec(t, env, []string{"--max-attempts", "2"}, "sh", "-c", "echo no good >&2; exit 3")
		eventually(t, 30*time.Second, func() bool { r, _ := execResult(t, js, id); return r.State == forq.StateDead }, "exit-3 task did not end dead")
		r, x := execResult(t, js, id)
		if r.Attempts != 2 || x.ExitCode != 3 || !strings.Contains(r.Error, "exit status 3: no good") {
			t.Errorf("got attempts %d, exit %d, error %q; want 2, 3, naming the exit status and stderr", r.Attempts, x.ExitCode, r.Error)
		}
		dead := deadLetter(t, js, id)
		if !strings.Contains(dead.Header.Get("Forq-Error"), "exit status 3") {
			t.Errorf("%s of the dead letter %q, want the exit status", "Forq-Error", dead.Header.Get("Forq-Error"))
		}
	})

	t.Run("killed by a signal", func(t *testing.T) {
		code, _, errs := run(t, nil, env, "enqueue", "--exec", "--wait", "--max-attempts", "1", "--", "sh", "-c", "kill -KILL $$")
		if code != 128+9 || !strings.Contains(errs, "killed by signal: killed") {
			t.Errorf("got exit %d, stderr %q; want 137 and the signal named", code, errs)
		}
	})
}

// deadLetter finds the dead letter of task id.
func deadLetter(t *testing.T, js jetstream.JetStream, id string) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(t.Context(), forq.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err == nil && m.Header.Get("Forq-Id") == id {
			return m
		}
	}
	t.Fatalf("no dead letter for %s", id)
	return nil
}

// A command that runs longer than the ack wait completes once, kept alive
// by the worker's in-progress acks.
func TestExecLongerThanAckWait(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	start(t, "forq", env, "pool", "-n", "2", "--allow-exec", "--ack-wait", "2s")
	runs := filepath.Join(t.TempDir(), "runs")
	id := enqueueExec(t, env, nil, "sh", "-c", `echo run >> "$0"; sleep 7; echo finished`, runs)
	js := b.js(t)
	eventually(t, 30*time.Second, func() bool { r, _ := execResult(t, js, id); return r.State == forq.StateSucceeded }, "long exec task did not succeed")
	r, x := execResult(t, js, id)
	if n := strings.Count(mustRead(runs), "run"); n != 1 || r.Attempts != 1 || x.Stdout != "finished\n" {
		t.Errorf("ran %d times, attempts %d, stdout %q; want once, 1, \"finished\"", n, r.Attempts, x.Stdout)
	}
}

func mustRead(f string) string {
	b, _ := os.ReadFile(f)
	return string(b)
}

// Timeout and cancel kill the command's whole process group.
func TestExecTimeoutAndCancelKillTheGroup(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	start(t, "forq", env, "work", "--allow-exec", "--concurrency", "2", "--exec-kill-grace", "1s")
	js := b.js(t)
	// sh records its PID and its background child's, then waits.
	script := `sleep 100 & echo $$ $! > "$0"; sleep 100`
	for _, tt := range []struct {
		name  string
		flags []string
		stop  func(id string)
		state forq.State
		err   string
	}{
		{"timeout", []string{"--timeout", "1s", "--max-attempts", "1"}, func(string) {}, forq.StateDead, "task timed out after 1s"},
		{"cancel", nil, func(id string) {
			if code, out, errs := run(t, nil, env, "cancel", id); code != 0 || !strings.Contains(out, "canceled "+id) {
				t.Errorf("forq cancel: exit %d, %q %q", code, out, errs)
			}
		}, forq.StateCanceled, "task canceled"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "pids")
			id := enqueueExec(t, env, tt.flags, "sh", "-c", script, pidFile)
			eventually(t, 20*time.Second, func() bool { return len(readPIDs(t, pidFile)) == 2 }, "the command never started")
			pids := readPIDs(t, pidFile)
			tt.stop(id)
			eventually(t, 20*time.Second, func() bool { r, _ := execResult(t, js, id); return r.State == tt.state }, "state is not %s", tt.state)
			r, _ := execResult(t, js, id)
			if !strings.Contains(r.Error, tt.err) || r.Attempts != 1 {
				t.Errorf("got error %q after %d attempts, want %q after 1", r.Error, r.Attempts, tt.err)
			}
			eventually(t, 5*time.Second, func() bool { return !alive(pids[0]) && !alive(pids[1]) }, "sh %d or its child sleep %d is still alive", pids[0], pids[1])
			if groupAlive(pids[0]) {
				t.Errorf("process group %d still has live processes", pids[0])
			}
		})
	}
}

// A queued task that is canceled never starts.
func TestCancelQueuedTask(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	marker := filepath.Join(t.TempDir(), "ran")
	id := enqueueExec(t, env, []string{"--queue", "later"}, "touch", marker)
	code, _, errs := run(t, nil, env, "cancel", id)
	if code != 0 {
		t.Fatalf("cancel: exit %d: %s", code, errs)
	}
	js := b.js(t)
	if r, _ := execResult(t, js, id); r.State != forq.StateCanceled {
		t.Errorf("state right after cancel %s, want canceled", r.State)
	}
	start(t, "forq", env, "work", "--allow-exec", "--queue", "later")
	eventually(t, 20*time.Second, func() bool { return streamMsgs(t, js, forq.StreamTasks, wire.TaskSubject("later")) == 0 }, "the canceled task was not dropped from the queue")
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("the canceled task ran")
	}
	if r, _ := execResult(t, js, id); r.State != forq.StateCanceled {
		t.Errorf("state %s, want canceled", r.State)
	}
	code, _, errs = run(t, nil, env, "cancel", id)
	if code != 1 || !strings.Contains(errs, "task already finished: it is canceled") {
		t.Errorf("second cancel: exit %d, %q; want 1 saying it already finished", code, errs)
	}
}

// The consumer running an exec task is SIGKILLed: the command dies with
// it, and the task is redelivered and completed by another consumer.
func TestExecWorkerKilled(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	first := start(t, "forq", env, "work", "--allow-exec", "--ack-wait", "2s")
	pidFile := filepath.Join(t.TempDir(), "pids")
	id := enqueueExec(t, env, nil, "sh", "-c", `echo $$ >> "$0"; sleep 2; echo completed`, pidFile)
	eventually(t, 20*time.Second, func() bool { return len(readPIDs(t, pidFile)) == 1 }, "the command never started")
	orphan := readPIDs(t, pidFile)[0]
	first.signal(syscall.SIGKILL)
	first.wait(5 * time.Second)
	eventually(t, 2*time.Second, func() bool { return !alive(orphan) }, "the command %d outlived its killed worker", orphan)
	start(t, "forq", env, "work", "--allow-exec", "--ack-wait", "2s")
	js := b.js(t)
	eventually(t, 30*time.Second, func() bool { r, _ := execResult(t, js, id); return r.State == forq.StateSucceeded }, "the task was not completed by the second worker")
	r, x := execResult(t, js, id)
	// The worker's death is not the task's failure (it was attempt 2
	// before issue 14): its second run, on its second delivery, is still
	// attempt 1.
	if r.Attempts != 1 || r.Run != 2 || x.Stdout != "completed\n" || len(readPIDs(t, pidFile)) != 2 {
		t.Errorf("got attempt %d, run %d, stdout %q, runs %d; want 1, 2, completed, 2", r.Attempts, r.Run, x.Stdout, len(readPIDs(t, pidFile)))
	}
}

// exec is off by default and limited by the allow-list; a refused task
// fails at once and nothing else is affected.
func TestExecNotAllowed(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	for _, tt := range []struct {
		name   string
		worker []string
		argv   []string
		err    string
	}{
		{"off by default", []string{"work", "--queue", "q1"}, []string{"echo", "hi"}, "exec tasks are off on this worker (start it with --allow-exec)"},
		{"outside the allow-list", []string{"work", "--queue", "q2", "--allow-exec", "--exec-allow", "echo,true"}, []string{"ls", "/"}, `"ls" is not in this worker's allow-list [echo true]`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := tt.worker[2]
			start(t, "forq", env, tt.worker...)
			args := append([]string{"enqueue", "--queue", q, "--exec", "--wait", "--max-attempts", "5", "--"}, tt.argv...)
			code, _, errs := run(t, nil, env, args...)
			if code != 1 || !strings.Contains(errs, tt.err) || !strings.Contains(errs, "dead after 1 attempt(s)") {
				t.Errorf("got exit %d, stderr %q; want 1, dead after 1 attempt, %q", code, errs, tt.err)
			}
			code, out, errs := run(t, nil, env, "enqueue", "--queue", q, "echo", "--payload", "still fine", "--wait")
			if code != 0 || out != "still fine\n" {
				t.Errorf("an echo task after it: exit %d, %q %q", code, out, errs)
			}
		})
	}
}

// forq demo subprocess: the tutorial's subprocess.call over the queue.
func TestDemoSubprocess(t *testing.T) {
	code, out, errs := run(t, nil, nil, "demo", "subprocess")
	if code != 0 || !strings.Contains(out, "$ ") || !strings.Contains(out, "Exit code: 0") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want the command, its output and Exit code: 0", code, out, errs)
	}
	if strings.Contains(out, "$ ping -c 4 127.0.0.1") && !strings.Contains(out, "4 packets transmitted") {
		t.Errorf("ping output missing: %q", out)
	}
}
