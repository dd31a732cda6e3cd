package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq/internal/torture"
)

// tortureRun runs "forq torture --json" with args and returns its exit
// code and result; the history stays in a test directory.
func tortureRun(t *testing.T, timeout time.Duration, args ...string) (int, *torture.Result) {
	t.Helper()
	dir := t.TempDir()
	args = append([]string{"--log-level", "warn", "torture", "--json", "--history-dir", dir}, args...)
	cmd := exec.Command(bin["forq"], args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Signal(os.Interrupt) // it stops its pool and broker
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		t.Fatalf("forq torture still running after %s; stderr:\n%s", timeout, tail(errb.String(), 3000))
	}
	code := cmd.ProcessState.ExitCode()
	var res torture.Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.Report == nil {
		t.Fatalf("forq torture %v: exit %d, no JSON result (%v); stdout:\n%s\nstderr:\n%s", args, code, err, tail(out.String(), 3000), tail(errb.String(), 3000))
	}
	var text strings.Builder
	res.WriteText(&text)
	figuref(t, "forq torture %s: exit %d\n%s", strings.Join(args[2:], " "), code, text.String())
	return code, &res
}

// TestTortureWorkerKills is issue 14's first "done when": a random worker
// SIGKILLed every 1-2 s, 50 kills or more, in a 20,000-task run with 4
// workers and the pool's default settings: no task lost, every task that
// ran twice explained by a kill, no two runs of one task at once, and the
// throughput during the kills at least half of the undisturbed one
// measured in the same run.
func TestTortureWorkerKills(t *testing.T) {
	// 20 ms of work a task keeps 4 workers under 200 tasks/s: the 20,000
	// tasks take 100 s or more, long enough for 50 kills at 1.5 s; on a
	// machine faster than that, --duration enqueues more for 85 s of
	// kills (50 kills take 75 s on average). --timeout makes a pool too
	// slow to restart its workers (or one that stopped) a clear failure
	// rather than a test timeout.
	code, res := tortureRun(t, 6*time.Minute,
		"--tasks", "20000", "--calm-tasks", "1000", "--workers", "4", "--work", "20ms", "--kill-every", "1.5s",
		"--duration", "85s", "--timeout", "4m")
	if res.CutShort != "" {
		t.Errorf("the run was cut short: %s", res.CutShort)
	}
	figuref(t, "figures: kills %d; lost %d; extra runs %v, unexplained %d; concurrent %d; calm %.0f/s, faults %.0f/s, ratio %.2f; drain after the kills %.1fs (ack wait %s)",
		res.Report.Faults[torture.FaultKill], len(res.Lost), res.Explained, res.Unexplained, len(res.Concurrent),
		res.Calm.PerSec, res.UnderFaults.PerSec, res.Ratio, res.DrainSeconds, res.AckWait)
	if res.PoolExited != "" {
		t.Errorf("the pool stopped during the kills: %s", res.PoolExited)
	}
	if n := res.Report.Faults[torture.FaultKill]; n < 50 {
		t.Errorf("got %d worker kills, want 50 or more", n)
	}
	if len(res.Lost) > 0 {
		t.Errorf("got %d tasks lost (%d still queued when the run ended), want 0 (first: %+v)", len(res.Lost), res.StillQueued, res.Lost[0])
	}
	if res.Unexplained > 0 {
		t.Errorf("got %d extra runs unexplained by a kill, want 0", res.Unexplained)
	}
	if len(res.Late) > 0 {
		t.Errorf("got %d runs completed after their task went to another worker, want 0", len(res.Late))
	}
	if len(res.Concurrent) > 0 {
		t.Errorf("got %d pairs of runs of one task alive at once, want 0", len(res.Concurrent))
	}
	if res.Ratio < 0.5 {
		t.Errorf("throughput during the kills %.0f/s is %.2f of the undisturbed %.0f/s, want at least 0.5", res.UnderFaults.PerSec, res.Ratio, res.Calm.PerSec)
	}
	if code != 0 {
		t.Errorf("forq torture exited %d, want 0", code)
	}
}

// TestTortureControlUnsafeHandler is the negative control of the worker
// kills: a handler that reports success before its work is recorded
// loses the tasks it was working on when its worker is killed, and the
// checker must say so.
func TestTortureControlUnsafeHandler(t *testing.T) {
	// The unsafe handler returns at once, so a worker has many tasks'
	// work (200 ms each) going on in the background when it is killed.
	code, res := tortureRun(t, 3*time.Minute,
		"--control", "unsafe-handler", "--tasks", "2000", "--calm-tasks", "0", "--workers", "2",
		"--work", "200ms", "--kill-every", "600ms", "--duration", "3s")
	if n := res.Report.Faults[torture.FaultKill]; n == 0 {
		t.Fatalf("no worker was killed; the control shows nothing")
	}
	if len(res.Lost) == 0 {
		t.Errorf("the checker found no lost task with a handler that acknowledges before it works, over %d kills", res.Report.Faults[torture.FaultKill])
	}
	for _, l := range res.Lost {
		if l.Starts == 0 {
			t.Errorf("lost task %s never started: the control loses tasks it started, not others", l.ID)
			break
		}
	}
	if code != 1 {
		t.Errorf("forq torture exited %d, want 1", code)
	}
	figuref(t, "figures: %d kills, %d tasks lost", res.Report.Faults[torture.FaultKill], len(res.Lost))
}

// TestTortureControlPhantomEnqueue is the negative control of the
// producer side: tasks recorded as acknowledged that were never enqueued
// are reported lost, every one of them and nothing else.
func TestTortureControlPhantomEnqueue(t *testing.T) {
	code, res := tortureRun(t, 2*time.Minute,
		"--control", "phantom-enqueue", "--tasks", "500", "--calm-tasks", "0", "--workers", "2", "--work", "1ms", "--kill-every", "0")
	phantoms := 0
	for _, l := range res.Lost {
		if strings.Contains(l.ID, "-phantom-") {
			phantoms++
		}
	}
	if phantoms != 100 || len(res.Lost) != 100 {
		t.Errorf("got %d lost of which %d phantom, want 100 and 100", len(res.Lost), phantoms)
	}
	if code != 1 {
		t.Errorf("forq torture exited %d, want 1", code)
	}
}

// TestTortureSoak is the long run of the worker kills, with pool kills
// too: 30 minutes. It runs only with FORQ_SOAK=1.
func TestTortureSoak(t *testing.T) {
	if os.Getenv("FORQ_SOAK") != "1" {
		t.Skip("a 30-minute soak; run with FORQ_SOAK=1")
	}
	code, res := tortureRun(t, 45*time.Minute,
		"--soak", "--tasks", "20000", "--calm-tasks", "2000", "--workers", "4", "--kill-every", "1.5s", "--kill-pool-every", "90s")
	if !res.OK() || code != 0 {
		t.Errorf("the soak broke forq's promises (exit %d); see the report above", code)
	}
	if res.Ratio < 0.5 {
		t.Errorf("throughput during the faults is %.2f of the undisturbed, want at least 0.5", res.Ratio)
	}
}

// TestTortureBadFlags: a bad flag of forq torture is refused with a
// message naming it and the usage exit code, before anything starts.
func TestTortureBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--tasks", "0"}, "--tasks must be at least 1"},
		{[]string{"--workers", "0"}, "--workers 0: must be 1 to 1024"},
		{[]string{"--kill-every=-1s"}, "durations must not be negative"},
		{[]string{"--freeze-every", "1s", "--freeze-for", "0s"}, "--freeze-for 0s: must be positive"},
		{[]string{"--url", "nats://127.0.0.1:1", "--kill-broker-every", "5s"}, "--kill-broker-every needs the broker forq torture starts"},
		{[]string{"--queue", "a.b"}, "--queue"},
		{[]string{"--control", "nope"}, "--control"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, _, stderr := run(t, nil, nil, append([]string{"torture"}, tt.args...)...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Errorf("got exit %d, stderr %q; want exit 2 and %q", code, stderr, tt.want)
			}
		})
	}
}
