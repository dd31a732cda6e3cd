package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// forq demo pool prints "Waiting for all subprocesses done..." right
// after the parent's line, before any task starts, as the tutorial's
// output does.
func TestDemoPoolWaitsRightAfterParent(t *testing.T) {
	code, out, errs := run(t, nil, nil, "demo", "pool")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 || !regexp.MustCompile(`^Parent process \d+\.$`).MatchString(lines[0]) || lines[1] != "Waiting for all subprocesses done..." {
		t.Fatalf("output:\n%s\nwant the parent's line, then %q", out, "Waiting for all subprocesses done...")
	}
	if !runTask.MatchString(lines[2]) {
		t.Errorf("third line %q, want the first task's start", lines[2])
	}
}

// timedLine is a line of a process's output and when the test read it.
type timedLine struct {
	text string
	at   time.Time
}

// runTimed runs forq with args and returns its stdout lines, each with
// the time it was read, as the process wrote it.
func runTimed(t *testing.T, args ...string) []timedLine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin["forq"], args...)
	var errb strings.Builder
	cmd.Stderr = &errb
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []timedLine
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		lines = append(lines, timedLine{sc.Text(), time.Now()})
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("forq %q: %v; stderr:\n%s", args, err, errb.String())
	}
	return lines
}

// forq demo subprocess streams the command's output as the command writes
// it: its first line reaches the demo's stdout about the 2 s the command
// sleeps before its second, not with it.
func TestDemoSubprocessStreams(t *testing.T) {
	lines := runTimed(t, "demo", "subprocess", "--", "sh", "-c", "echo first; sleep 2; echo second")
	var texts []string
	at := map[string]time.Time{}
	for _, l := range lines {
		texts = append(texts, l.text)
		at[l.text] = l.at
	}
	if len(texts) != 4 || texts[0] != "$ sh -c echo first; sleep 2; echo second" || texts[1] != "first" || texts[2] != "second" ||
		!regexp.MustCompile(`^Exit code: 0 \(run by worker process \d+\)$`).MatchString(texts[3]) {
		t.Fatalf("output %q: want the command, its two lines and its exit code", texts)
	}
	if gap := at["second"].Sub(at["first"]); gap < time.Second {
		t.Errorf("the first line came %s before the second, want about 2s: the output was not streamed", gap)
	}
	if gap := at[texts[3]].Sub(at["first"]); gap < time.Second {
		t.Errorf("the first line came %s before the exit code, want about 2s", gap)
	}
}

// forq demo fork: the parent and the child each print their PID and the
// other's.
func TestDemoFork(t *testing.T) {
	code, out, errs := run(t, nil, nil, "demo", "fork")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	start := regexp.MustCompile(`^Process (\d+) start!\n`).FindStringSubmatch(out)
	parent := regexp.MustCompile(`(?m)^I'm parent process (\d+) and my child is (\d+)\.$`).FindStringSubmatch(out)
	child := regexp.MustCompile(`(?m)^I'm child process (\d+) and my parent is (\d+)\.$`).FindStringSubmatch(out)
	if start == nil || parent == nil || child == nil || strings.Count(out, "\n") != 3 {
		t.Fatalf("output %q: want the tutorial's three lines", out)
	}
	if parent[1] != start[1] || child[2] != start[1] || parent[2] != child[1] || child[1] == start[1] {
		t.Errorf("output %q: want the parent %s naming its child, and a child of another PID naming the parent", out, start[1])
	}
}

// forq demo lock: without the lock concurrent read-then-write updates of
// the balance are lost; with lock.acquire() / try / finally: release()
// around each, the balance ends right. Both rounds in one run.
func TestDemoLock(t *testing.T) {
	code, out, errs := run(t, nil, nil, "demo", "lock", "--processes", "3", "--times", "30")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	balances := regexp.MustCompile(`(?m)^balance = (\d+), want (\d+)`).FindAllStringSubmatch(out, -1)
	if len(balances) != 2 || !strings.Contains(out, "Without a lock") || !strings.Contains(out, "lock.acquire(); try: change_it() finally: lock.release()") {
		t.Fatalf("output:\n%s\nwant a round without the lock, then one with it", out)
	}
	if strings.Index(out, "Without a lock") > strings.Index(out, "With the lock") {
		t.Errorf("output:\n%s\nwant the round without the lock first", out)
	}
	for i, b := range balances {
		got, _ := strconv.Atoi(b[1])
		want, _ := strconv.Atoi(b[2])
		if want != 90 {
			t.Errorf("round %d: want %d, expected 3 processes × 30", i, want)
		}
		if i == 0 && got >= want {
			t.Errorf("without the lock the balance is %d of %d: no update lost (the processes ran together? output:\n%s)", got, want, out)
		}
		if i == 1 && got != want {
			t.Errorf("with the lock the balance is %d, want %d", got, want)
		}
	}
	if n := len(regexp.MustCompile(`(?m)^Process \d+ changes the balance 30 times`).FindAllString(out, -1)); n != 6 {
		t.Errorf("%d processes said they changed the balance, want 3 in each round", n)
	}
}

// forq run's start-up log names the pool's size and queues, not its
// workers' command lines.
func TestRunLogsPoolSizeAndQueues(t *testing.T) {
	p := start(t, "forq", nil, "run", "--data-dir", t.TempDir(), "--port", "0", "-n", "2", "-q", "a,b", "--ack-wait", "4s")
	eventually(t, 30*time.Second, func() bool { return strings.Contains(p.stderr(), `msg="pool starting"`) },
		"no start-up log; stderr:\n%s", p.stderr())
	var line string
	for _, l := range strings.Split(p.stderr(), "\n") {
		if strings.Contains(l, `msg="pool starting"`) {
			line = l
		}
	}
	for _, want := range []string{"workers=2", `queues="[a b]"`, `command="forq work"`} {
		if !strings.Contains(line, want) {
			t.Errorf("start-up log %q, want %s", line, want)
		}
	}
	if strings.Contains(p.stderr(), "--ack-wait") || strings.Contains(p.stderr(), os.TempDir()+"/forq-e2e-bin") {
		t.Errorf("the log shows a worker's command line:\n%s", p.stderr())
	}
	p.signal(syscall.SIGINT)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("forq run exit %d after SIGINT, want 0", code)
	}
}
