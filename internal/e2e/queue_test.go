package e2e

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// set returns the distinct values of xs and the values seen more than once.
func set(xs []string) (map[string]bool, []string) {
	m := map[string]bool{}
	var dups []string
	for _, x := range xs {
		if m[x] {
			dups = append(dups, x)
		}
		m[x] = true
	}
	return m, dups
}

func missing(want []string, got map[string]bool) []string {
	var out []string
	for _, w := range want {
		if !got[w] {
			out = append(out, w)
		}
	}
	return out
}

// Broker, producer and consumer as three OS processes: 10,000 tasks are
// each processed exactly once when nothing crashes.
func TestThreeProcessesProcessEachTaskOnce(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	w := start(t, "worker", env, "-concurrency", "8")
	p := start(t, "producer", env, "-n", "10000")
	if code := p.wait(120 * time.Second); code != 0 {
		t.Fatalf("producer exit code %d, want 0", code)
	}
	enq := p.lines("enqueued ")
	if len(enq) != 10000 {
		t.Fatalf("producer enqueued %d tasks, want 10000", len(enq))
	}
	eventually(t, 120*time.Second, func() bool { return len(w.lines("done ")) >= 10000 },
		"worker processed %d of 10000 tasks", len(w.lines("done ")))
	time.Sleep(200 * time.Millisecond) // let any duplicate show up
	done, dups := set(w.lines("done "))
	if len(dups) > 0 {
		t.Errorf("%d tasks processed more than once, e.g. %s", len(dups), dups[0])
	}
	if m := missing(enq, done); len(m) > 0 {
		t.Errorf("%d tasks never processed, e.g. %s", len(m), m[0])
	}
	js := b.js(t)
	if n := streamMsgs(t, js, forq.StreamTasks, ""); n != 0 {
		t.Errorf("%s holds %d tasks after the run, want 0", forq.StreamTasks, n)
	}
	w.signal(syscall.SIGTERM)
	if code := w.wait(20 * time.Second); code != 0 {
		t.Errorf("worker exit code after SIGTERM %d, want 0", code)
	}
}

// A consumer SIGKILLed in the middle of tasks loses none: a second one
// processes everything the first did not finish.
func TestKilledConsumerLosesNoTask(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	p := start(t, "producer", env, "-n", "2000")
	if code := p.wait(60 * time.Second); code != 0 {
		t.Fatalf("producer exit code %d, want 0", code)
	}
	enq := p.lines("enqueued ")
	first := start(t, "worker", env, "-concurrency", "8", "-work", "5ms", "-ack-wait", "2s")
	eventually(t, 60*time.Second, func() bool { return len(first.lines("done ")) >= 300 }, "first worker never got going")
	first.signal(syscall.SIGKILL)
	first.wait(10 * time.Second)
	byFirst := first.lines("done ")
	if len(byFirst) >= len(enq) {
		t.Fatalf("first worker finished all %d tasks before it was killed; the test proves nothing", len(byFirst))
	}
	second := start(t, "worker", env, "-concurrency", "8", "-ack-wait", "2s")
	eventually(t, 60*time.Second, func() bool {
		done, _ := set(append(first.lines("done "), second.lines("done ")...))
		return len(missing(enq, done)) == 0
	}, "tasks lost after the consumer was killed: first did %d, second did %d of %d", len(byFirst), len(second.lines("done ")), len(enq))
	js := b.js(t)
	eventually(t, 10*time.Second, func() bool { return streamMsgs(t, js, forq.StreamTasks, "") == 0 }, "tasks left in %s", forq.StreamTasks)
}

// A broker SIGKILLed and restarted on the same data directory keeps every
// task whose enqueue had returned; the worker and the producer reconnect by
// themselves.
func TestBrokerKilledAndRestartedKeepsTasks(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	w := start(t, "worker", env, "-concurrency", "4", "-work", "2ms")
	p := start(t, "producer", env, "-n", "3000")
	eventually(t, 60*time.Second, func() bool { return len(p.lines("enqueued ")) >= 1000 && len(w.lines("done ")) >= 100 },
		"producer and worker never got going")
	b.signal(syscall.SIGKILL)
	b.wait(10 * time.Second)
	before := len(p.lines("enqueued "))
	time.Sleep(500 * time.Millisecond)
	startBroker(t, b.dir, b.port)
	if code := p.wait(120 * time.Second); code != 0 {
		t.Fatalf("producer exit code %d, want 0", code)
	}
	enq := p.lines("enqueued ")
	if len(enq) != 3000 {
		t.Fatalf("producer enqueued %d, want 3000", len(enq))
	}
	eventually(t, 120*time.Second, func() bool {
		done, _ := set(w.lines("done "))
		return len(missing(enq, done)) == 0
	}, "tasks lost across the broker restart (%d enqueued before the kill)", before)
	if !strings.Contains(p.stderr(), "retrying") {
		t.Logf("the producer saw no failed enqueue; it had enqueued %d before the kill", before)
	}
}

// "forq broker" stops on SIGTERM and SIGINT and keeps stored tasks.
func TestBrokerStopKeepsTasks(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			b := startBroker(t, "", 0)
			env := []string{"FORQ_URL=" + b.url}
			for i := range 5 {
				if code, _, errs := run(t, nil, env, "enqueue", "echo", "--payload", fmt.Sprint(i)); code != 0 {
					t.Fatalf("enqueue: exit %d: %s", code, errs)
				}
			}
			b.signal(sig)
			if code := b.wait(20 * time.Second); code != 0 {
				t.Fatalf("broker exit code %d, want 0", code)
			}
			if !strings.Contains(b.stderr(), "forq broker: stopped") {
				t.Errorf("broker stderr %q, want it to say it stopped", b.stderr())
			}
			if b.stdout() != "" {
				t.Errorf("broker stdout %q, want nothing: its banner goes to stderr, stdout is for results", b.stdout())
			}
			b2 := startBroker(t, b.dir, 0)
			if n := streamMsgs(t, b2.js(t), forq.StreamTasks, ""); n != 5 {
				t.Errorf("after restart %s holds %d tasks, want 5", forq.StreamTasks, n)
			}
		})
	}
}

// Bad input gets one clear message naming the problem and exit 2 (usage)
// or 1 (runtime), and loses nothing: a refused command writes nothing to
// the broker (no task, schedule, cancel request or result), and tasks
// queued before it still run. Each row is a bad input a new user tried
// (issue 14, point 9, among others).
func TestBadInput(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url}
	w := start(t, "forq", env, "work", "--retry-base", "10ms")
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	badLines := filepath.Join(dir, "lines")
	if err := os.WriteFile(badLines, []byte("1s\n2s\nforever\n3s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	js := b.js(t)
	// Tasks already queued must come through whatever the bad input did.
	_, before, _ := run(t, nil, env, "enqueue", "echo", "--payload", "survivor", "--record")
	// A task that stays queued on a queue no worker serves, to cancel.
	_, parked, _ := run(t, nil, env, "enqueue", "echo", "--queue", "parked")
	parked = strings.TrimSpace(parked)
	tests := []badInput{
		{name: "unknown task type", args: []string{"enqueue", "nope", "--wait", "--max-attempts", "2"}, code: 1, stderr: `no handler for task type "nope" on this worker (it handles [echo exec sleep])`, writes: true},
		{name: "payload over max payload", args: []string{"enqueue", "echo", "--file", big}, code: 2, stderr: "the broker accepts at most 1048576"},
		{name: "malformed --payload", args: []string{"enqueue", "sleep", "--payload", "forever"}, code: 2, stderr: `--payload: sleep payload "forever" is not a duration like 250ms or 2s`},
		{name: "malformed line in bulk", args: []string{"enqueue", "sleep", "--file", badLines, "--lines"}, code: 2, stderr: "line 3: sleep payload \"forever\" is not a duration like 250ms or 2s; nothing was enqueued"},
		{name: "bad queue name", args: []string{"enqueue", "echo", "--queue", "a.b"}, code: 2, stderr: `invalid queue name: "a.b" has '.'`},
		{name: "data dir that cannot be created", args: []string{"broker", "--data-dir", "/proc/forq/data"}, code: 1, stderr: "create data directory: mkdir /proc/forq"},
		{name: "unreachable broker", args: []string{"enqueue", "echo", "--url", "nats://127.0.0.1:1", "--connect-timeout", "300ms"}, code: 1, stderr: "cannot reach the broker at nats://127.0.0.1:1"},
		{name: "unknown flag", args: []string{"enqueue", "echo", "--colour"}, code: 2, stderr: "unknown flag --colour"},
		{name: "missing argument", args: []string{"enqueue"}, code: 2, stderr: `expected "<type>"`},
		{name: "bad duration flag", args: []string{"work", "--grace", "soon"}, code: 2, stderr: "--grace"},
		{name: "bad heap floor", args: []string{"work", "--heap-floor", "lots"}, code: 2, stderr: `--heap-floor: "lots" is not a size like 512MiB or 1GB`},
		{name: "bad heap floor for a pool", args: []string{"pool", "--heap-floor", "12XB"}, code: 2, stderr: `--heap-floor: "12XB": unknown unit "xb"`},

		// Negative numbers are read as values, as written, and get
		// forq's message, not the flag parser's "perhaps try --in=...".
		{name: "negative --in", args: []string{"enqueue", "echo", "--in", "-5s"}, code: 2, stderr: "forq enqueue: --in -5s: must be positive"},
		{name: "negative --in, the form the parser suggested", args: []string{"enqueue", "echo", "--in=-5s"}, code: 2, stderr: "forq enqueue: --in -5s: must be positive"},
		{name: "negative --in with a bad unit", args: []string{"enqueue", "echo", "--in", "-5x"}, code: 2, stderr: `--in: expected duration but got "-5x": time: unknown unit "x"`},
		{name: "a flag where a number goes", args: []string{"enqueue", "echo", "--max-attempts", "--wait"}, code: 2, stderr: `forq: --max-attempts: expected a number, got "--wait" (a flag, or its value is missing)`},
		{name: "a number flag at the end", args: []string{"enqueue", "echo", "--in"}, code: 2, stderr: "forq: --in: expected a duration like 5s, got nothing"},
		{name: "negative --max-attempts", args: []string{"enqueue", "echo", "--max-attempts", "-1"}, code: 2, stderr: "forq enqueue: --max-attempts -1: must be at least 1"},
		{name: "negative --max-attempts of a schedule", args: []string{"schedule", "add", "s", "echo", "--every", "1s", "--max-attempts", "-1"}, code: 2, stderr: "forq schedule add: --max-attempts -1: must be at least 1"},
		{name: "negative -n", args: []string{"pool", "-n", "-1"}, code: 2, stderr: "forq pool: --workers -1: must be 0 (the number of CPUs) to 1024"},
		{name: "negative -n=", args: []string{"pool", "-n=-1"}, code: 2, stderr: "forq pool: --workers -1: must be 0 (the number of CPUs) to 1024"},
		{name: "pool of 100000", args: []string{"pool", "--workers", "100000"}, code: 2, stderr: "forq pool: --workers 100000: must be 0 (the number of CPUs) to 1024"},
		{name: "run with negative -n", args: []string{"run", "--data-dir", filepath.Join(dir, "run"), "--port", "0", "-n", "-1"}, code: 2, stderr: "forq run: --workers -1: must be 0 (the number of CPUs) to 1024"},
		{name: "negative --wait-timeout", args: []string{"enqueue", "echo", "--wait", "--wait-timeout=-1s"}, code: 2, stderr: "forq enqueue: --wait-timeout -1s: must not be negative (0 waits forever)"},
		{name: "negative --wait-timeout of result", args: []string{"result", strings.TrimSpace(before), "--wait", "--wait-timeout", "-1s"}, code: 2, stderr: "forq result: --wait-timeout -1s: must not be negative (0 waits forever)"},
		{name: "negative --grace", args: []string{"work", "--grace", "-1s"}, code: 2, stderr: "forq work: --grace -1s: must be positive"},
		{name: "zero --ack-wait", args: []string{"work", "--ack-wait", "0s"}, code: 2, stderr: "forq work: --ack-wait 0s: must be positive"},
		{name: "negative --retry-base", args: []string{"pool", "--retry-base", "-10ms"}, code: 2, stderr: "forq pool: --retry-base -10ms: must be positive"},
		{name: "short --lock-ttl", args: []string{"work", "--lock-ttl", "10ms"}, code: 2, stderr: "forq work: --lock-ttl 10ms: must be at least 1s"},
		{name: "negative --exec-kill-grace", args: []string{"work", "--exec-kill-grace", "-1s"}, code: 2, stderr: "forq work: --exec-kill-grace -1s: must be positive"},
		{name: "negative --metrics-port", args: []string{"work", "--metrics-port", "-1"}, code: 2, stderr: "forq work: --metrics-port -1: must be 0 (off) to 65535"},
		{name: "negative --restart-window", args: []string{"pool", "--restart-window", "-1s"}, code: 2, stderr: "forq pool: --restart-window -1s: must be positive"},
		{name: "zero --max-restarts", args: []string{"pool", "--max-restarts", "0"}, code: 2, stderr: "forq pool: --max-restarts 0: must be at least 1"},
		{name: "negative --connect-timeout", args: []string{"stats", "--connect-timeout", "-1s"}, code: 2, stderr: "forq stats: --connect-timeout -1s: must be positive"},
		{name: "zero --replicas", args: []string{"enqueue", "echo", "--replicas", "0"}, code: 2, stderr: "forq enqueue: --replicas 0: must be 1 to 5"},
		{name: "negative --result-ttl", args: []string{"work", "--result-ttl", "-1h"}, code: 2, stderr: "forq work: --result-ttl -1h0m0s: must be positive"},
		{name: "negative --progress-interval", args: []string{"enqueue", "echo", "--file", badLines, "--lines", "--progress-interval", "-1s"}, code: 2, stderr: "forq enqueue: --progress-interval -1s: must be positive"},

		{name: "broker port out of range", args: []string{"broker", "--data-dir", filepath.Join(dir, "b"), "--port", "70000"}, code: 2, stderr: "forq broker: --port 70000: must be 0 (a free one) to 65535"},
		{name: "negative broker monitoring port", args: []string{"broker", "--data-dir", filepath.Join(dir, "b"), "--http-port", "-2"}, code: 2, stderr: "forq broker: --http-port -2: must be -1 (a free one; 0 is off) to 65535"},
		{name: "negative max payload", args: []string{"broker", "--data-dir", filepath.Join(dir, "b"), "--max-payload", "-1"}, code: 2, stderr: "forq broker: --max-payload -1: must not be negative"},
		{name: "run on a negative port", args: []string{"run", "--data-dir", filepath.Join(dir, "run"), "--port", "-5"}, code: 2, stderr: "forq run: --port -5: must be 0 (a free one) to 65535"},

		// An empty queue is refused by workers as by producers.
		{name: "empty queue for a worker", args: []string{"work", "-q", ""}, code: 2, stderr: "forq work: --queue: invalid queue name: empty name"},
		{name: "empty queue for a pool", args: []string{"pool", "-q", ""}, code: 2, stderr: "forq pool: --queue: invalid queue name: empty name"},
		{name: "empty queue for an enqueue", args: []string{"enqueue", "echo", "-q", ""}, code: 2, stderr: "forq enqueue: --queue: invalid queue name: empty name"},
		{name: "queue name in Cyrillic", args: []string{"enqueue", "echo", "-q", "задачи"}, code: 2, stderr: `"задачи" has 'з'; use ASCII letters, digits, '-' and '_'`},

		// Task IDs no task can have.
		{name: "result of a malformed ID", args: []string{"result", "a.b"}, code: 2, stderr: `forq result: invalid task: task ID "a.b" has '.'; use ASCII letters, digits, '-', '_', '=' and '/'`},
		{name: "result of an ID with a space", args: []string{"result", "a b"}, code: 2, stderr: `task ID "a b" has ' '`},
		{name: "cancel of a malformed ID", args: []string{"cancel", "a.b"}, code: 2, stderr: `forq cancel: invalid task: task ID "a.b" has '.'`},
		{name: "cancel of a good and a malformed ID cancels neither", args: []string{"cancel", parked, "a b"}, code: 2, stderr: `task ID "a b" has ' '`},
		{name: "enqueue with an ID the results bucket cannot key", args: []string{"enqueue", "echo", "--id", "a:b", "--wait"}, code: 2, stderr: `task ID "a:b" has ':'`},

		// Schedules.
		{name: "--every 0s", args: []string{"schedule", "add", "s", "echo", "--every", "0s"}, code: 2, stderr: "forq schedule add: --every 0s: the broker ticks in whole seconds, at least 1s"},
		{name: "neither --every nor --cron", args: []string{"schedule", "add", "s", "echo"}, code: 2, stderr: "forq schedule add: give --every INTERVAL or --cron EXPRESSION"},
		{name: "cron date that never comes", args: []string{"schedule", "add", "s", "echo", "--cron", "0 0 31 2 *"}, code: 2, stderr: `cron "0 0 31 2 *": it never fires: day-of-month "31" does not occur in month "2"`},
		{name: "cron day-of-week 8", args: []string{"schedule", "add", "s", "echo", "--cron", "0 9 * * 8"}, code: 2, stderr: `day-of-week field "8": 8 is out of range 0-7 (0 and 7 are Sunday)`},
		{name: "schedule rm of a malformed name removes nothing", args: []string{"schedule", "rm", "ok-name", "a.b"}, code: 2, stderr: `forq schedule rm: schedule name: invalid queue name: "a.b" has '.'; use ASCII letters, digits, '-' and '_'; nothing was removed`},
		{name: "pause --for 0s", args: []string{"pause", "parked", "--for", "0s"}, code: 2, stderr: "forq pause: --for 0s: must be positive"},
		{name: "schedule name in Cyrillic", args: []string{"schedule", "add", "отчёт", "echo", "--every", "1s"}, code: 2, stderr: "use ASCII letters, digits, '-' and '_'"},

		// FORQ_URL does not point forq bench at a live broker: it runs
		// its own, and writes nothing to this one.
		{name: "bench ignores FORQ_URL", args: []string{"bench", "--tasks", "200", "--workers", "1", "--samples", "5", "--rate", "200", "--scale=", "--json"}, code: 0, stdout: `"embedded_broker": true`},
	}
	// The survivor's result is in before the rows run, so that nothing
	// but the rows writes to the broker while they do.
	if code, out, errs := run(t, nil, env, "result", "--wait", "--wait-timeout", "20s", strings.TrimSpace(before)); code != 0 {
		t.Fatalf("the task queued before the bad input: exit %d, %q %q", code, out, errs)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.check(t, env, js) })
	}
	if n := streamMsgs(t, js, forq.StreamTasks, wire.TaskSubject("default")); n != 0 {
		t.Errorf("after the bad input %d tasks wait in the queue, want 0 (the bulk with a bad line enqueues nothing)", n)
	}
	if n := streamMsgs(t, js, forq.StreamTasks, wire.TaskSubject("parked")); n != 1 {
		t.Errorf("queue parked holds %d tasks, want its 1", n)
	}
	if n := streamMsgs(t, js, forq.StreamTasks, forq.SubjectPeriodicPrefix+">"); n != 0 {
		t.Errorf("%d schedules stored, want none", n)
	}
	for _, name := range streamNames(t, js) {
		if strings.Contains(strings.ToLower(name), "bench") {
			t.Errorf("stream %s on the FORQ_URL broker after forq bench", name)
		}
	}
	if c, err := js.Consumer(t.Context(), forq.StreamTasks, "bench"); err == nil {
		t.Errorf("consumer %s on the FORQ_URL broker after forq bench", c.CachedInfo().Name)
	}
	code, out, errs := run(t, nil, env, "result", "--wait", "--wait-timeout", "20s", strings.TrimSpace(before))
	if code != 0 || !strings.Contains(out, "state:     succeeded") || !strings.Contains(out, "result:    survivor") {
		t.Errorf("the task queued before the bad input: exit %d, %q %q; want it succeeded", code, out, errs)
	}
	code, out, errs = run(t, nil, env, "enqueue", "echo", "--payload", "after", "--wait", "--wait-timeout", "20s")
	if code != 0 || out != "after\n" {
		t.Errorf("a task after the bad input: exit %d, out %q, stderr %q; want 0, \"after\"", code, out, errs)
	}
	if strings.Contains(w.stderr(), "panic") {
		t.Errorf("the worker panicked:\n%s", w.stderr())
	}
	w.signal(syscall.SIGTERM)
	if code := w.wait(20 * time.Second); code != 0 {
		t.Errorf("worker exit code after SIGTERM %d, want 0", code)
	}
}

// badInput is a row of TestBadInput: a command and what it must say.
type badInput struct {
	name   string
	args   []string
	code   int
	stderr string
	stdout string // "" means stdout must be empty
	writes bool   // the command may write to the broker
}

// check runs the row's command and checks its exit code, its output, and
// that it wrote nothing to the broker of js unless the row allows it.
func (tt badInput) check(t *testing.T, env []string, js jetstream.JetStream) {
	t.Helper()
	seqs := streamSeqs(t, js)
	start := time.Now()
	code, stdout, stderr := run(t, nil, env, tt.args...)
	t.Logf("forq %q: exit %d in %s: %s", tt.args, code, time.Since(start).Round(time.Millisecond), strings.TrimSpace(stderr))
	if code != tt.code || !strings.Contains(stderr, tt.stderr) {
		t.Errorf("forq %s: got exit %d, stderr %q; want exit %d, stderr containing %q", strings.Join(tt.args, " "), code, stderr, tt.code, tt.stderr)
	}
	if tt.code == exitUsage && strings.Count(strings.TrimSpace(stderr), "\n") > 1 {
		t.Errorf("forq %s: stderr has %d lines, want one message (and at most a usage hint): %q", strings.Join(tt.args, " "), strings.Count(stderr, "\n"), stderr)
	}
	if tt.stdout == "" && stdout != "" && tt.code != 0 {
		t.Errorf("forq %s: stdout %q, want none", strings.Join(tt.args, " "), stdout)
	}
	if !strings.Contains(stdout, tt.stdout) {
		t.Errorf("forq %s: stdout %q, want it to contain %q", strings.Join(tt.args, " "), stdout, tt.stdout)
	}
	if !tt.writes {
		if after := streamSeqs(t, js); !maps.Equal(seqs, after) {
			t.Errorf("forq %s wrote to the broker: last sequence of each stream %v, then %v", strings.Join(tt.args, " "), seqs, after)
		}
	}
}

// exitUsage is forq's exit code of a usage error.
const exitUsage = 2

// streamSeqs returns the last sequence of every stream in the broker but
// the workers' status bucket, which a running worker rewrites every 2s: a
// command that wrote nothing leaves them all as they were.
func streamSeqs(t *testing.T, js jetstream.JetStream) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	l := js.ListStreams(t.Context())
	for info := range l.Info() {
		if info.Config.Name != "KV_"+forq.BucketWorkers {
			out[info.Config.Name] = info.State.LastSeq
		}
	}
	if err := l.Err(); err != nil {
		t.Fatalf("list streams: %v", err)
	}
	return out
}

func streamNames(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	var out []string
	for name := range streamSeqs(t, js) {
		out = append(out, name)
	}
	return out
}

// "forq demo queue": the writer/reader dialogue, in two processes.
func TestDemoQueue(t *testing.T) {
	code, out, errs := run(t, nil, nil, "demo", "queue")
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errs)
	}
	writer := regexp.MustCompile(`Process to write: (\d+) \(parent (\d+)\)`).FindStringSubmatch(out)
	reader := regexp.MustCompile(`Process to read: (\d+) \(parent (\d+)\)`).FindStringSubmatch(out)
	if writer == nil || reader == nil {
		t.Fatalf("output %q: want the writer's and the reader's PIDs", out)
	}
	if writer[1] == reader[1] || writer[2] != reader[2] || writer[1] == writer[2] {
		t.Errorf("writer pid %s parent %s, reader pid %s parent %s: want two distinct children of one parent", writer[1], writer[2], reader[1], reader[2])
	}
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "Put ") || strings.HasPrefix(l, "Get ") {
			got = append(got, l)
		}
	}
	for _, v := range []string{"A", "B", "C"} {
		put := indexOf(got, "Put "+v+" to queue...")
		get := indexOf(got, "Get "+v+" from queue.")
		if put < 0 || get < 0 || get < put {
			t.Errorf("dialogue %q: want %q before %q", got, "Put "+v+" to queue...", "Get "+v+" from queue.")
		}
	}
}

func indexOf(xs []string, x string) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	return -1
}
