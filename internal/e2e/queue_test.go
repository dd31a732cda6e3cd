package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
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
			if !strings.Contains(b.stdout(), "forq broker: stopped") {
				t.Errorf("broker stdout %q, want it to say it stopped", b.stdout())
			}
			b2 := startBroker(t, b.dir, 0)
			if n := streamMsgs(t, b2.js(t), forq.StreamTasks, ""); n != 5 {
				t.Errorf("after restart %s holds %d tasks, want 5", forq.StreamTasks, n)
			}
		})
	}
}

// Bad input gets a clear error naming the problem, and loses nothing.
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
	// Tasks already queued must come through whatever the bad input did.
	_, before, _ := run(t, nil, env, "enqueue", "echo", "--payload", "survivor", "--record")
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"unknown task type", []string{"enqueue", "nope", "--wait", "--max-attempts", "2"}, 1, `no handler for task type "nope" on this worker (it handles [echo exec sleep])`},
		{"payload over max payload", []string{"enqueue", "echo", "--file", big}, 2, "the broker accepts at most 1048576"},
		{"malformed --payload", []string{"enqueue", "sleep", "--payload", "forever"}, 2, `--payload: sleep payload "forever" is not a duration like 250ms or 2s`},
		{"malformed line in bulk", []string{"enqueue", "sleep", "--file", badLines, "--lines"}, 2, "line 3: sleep payload \"forever\" is not a duration like 250ms or 2s; nothing was enqueued"},
		{"bad queue name", []string{"enqueue", "echo", "--queue", "a.b"}, 2, `invalid queue name: "a.b" has '.'`},
		{"data dir that cannot be created", []string{"broker", "--data-dir", "/proc/forq/data"}, 1, "create data directory: mkdir /proc/forq"},
		{"unreachable broker", []string{"enqueue", "echo", "--url", "nats://127.0.0.1:1", "--connect-timeout", "300ms"}, 1, "cannot reach the broker at nats://127.0.0.1:1"},
		{"unknown flag", []string{"enqueue", "echo", "--colour"}, 2, "unknown flag --colour"},
		{"missing argument", []string{"enqueue"}, 2, `expected "<type>"`},
		{"bad duration flag", []string{"work", "--grace", "soon"}, 2, "--grace"},
		{"bad heap floor", []string{"work", "--heap-floor", "lots"}, 2, `--heap-floor: "lots" is not a size like 512MiB or 1GB`},
		{"bad heap floor for a pool", []string{"pool", "--heap-floor", "12XB"}, 2, `--heap-floor: "12XB": unknown unit "xb"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, nil, env, tt.args...)
			if code != tt.code || !strings.Contains(stderr, tt.stderr) {
				t.Errorf("forq %s: got exit %d, stderr %q; want exit %d, stderr containing %q", strings.Join(tt.args, " "), code, stderr, tt.code, tt.stderr)
			}
		})
	}
	js := b.js(t)
	if n := streamMsgs(t, js, forq.StreamTasks, forq.TaskSubject("default")); n != 0 {
		t.Errorf("after the bad input %d tasks wait in the queue, want 0 (the bulk with a bad line enqueues nothing)", n)
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
