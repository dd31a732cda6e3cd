package e2e

// The stock nats CLI (github.com/nats-io/natscli) run against a forq broker:
// each thing docs/nats-cli.md (the README's "Inspecting forq with the nats
// CLI" section) says it shows, it shows; and a task published with
// "nats pub" and the documented headers is processed.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/nats-io/nats.go"
)

// natsCLIVersion is the natscli release the README documents and CI installs.
const natsCLIVersion = "v0.5.0"

// natsTimeout bounds every run of the nats binary.
const natsTimeout = 20 * time.Second

const natsInstall = "go install github.com/nats-io/natscli/nats@" + natsCLIVersion

// natsBinary finds the nats CLI: on PATH, else in $(go env GOPATH)/bin.
var natsBinary = sync.OnceValues(func() (string, error) {
	if p, err := exec.LookPath("nats"); err == nil {
		return p, nil
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return "", err
	}
	for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
		p := filepath.Join(dir, "bin", "nats")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("nats is neither on PATH nor in $(go env GOPATH)/bin")
})

// natsCLI runs the nats binary against one broker, with a home directory of
// its own so that the user's nats contexts do not apply.
type natsCLI struct {
	bin string
	url string
	env []string
}

// newNatsCLI finds the nats binary or skips the test (fails it under CI,
// which must install it). Set its url before running it.
func newNatsCLI(t *testing.T) *natsCLI {
	t.Helper()
	waitForTools(t)
	p, err := natsBinary()
	if err != nil {
		msg := "the nats CLI is not installed (" + err.Error() + "); install it with: " + natsInstall
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	home := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "NATS_") || k == "HOME" || k == "XDG_CONFIG_HOME" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"))
	n := &natsCLI{bin: p, env: env}
	v, _ := n.try(t, "--version")
	v = strings.TrimSpace(v)
	if v != natsCLIVersion {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is nats %q; CI needs %s: %s", p, v, natsCLIVersion, natsInstall)
		}
		t.Logf("warning: %s is nats %q, not %s, which the README documents", p, v, natsCLIVersion)
	}
	return n
}

func (n *natsCLI) command(ctx context.Context, args []string) *exec.Cmd {
	if n.url != "" {
		args = append([]string{"--server", n.url}, args...)
	}
	cmd := exec.CommandContext(ctx, n.bin, args...)
	cmd.Env = n.env
	cmd.Stdin = nil // /dev/null: nats must not prompt
	cmd.WaitDelay = time.Second
	return cmd
}

// try runs nats with args to its end and returns its stdout and stderr and
// its error, if any.
func (n *natsCLI) try(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), natsTimeout)
	defer cancel()
	cmd := n.command(ctx, args)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("nats %s: still running after %s; output:\n%s", strings.Join(args, " "), natsTimeout, out.String())
	}
	return out.String(), err
}

// run runs nats with args, fails the test if it fails, and returns its
// stdout and stderr together.
func (n *natsCLI) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := n.try(t, args...)
	if err != nil {
		t.Fatalf("nats %s: %v; output:\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// stdout runs nats with args and returns its standard output alone.
func (n *natsCLI) stdout(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), natsTimeout)
	defer cancel()
	cmd := n.command(ctx, args)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("nats %s: %v; stdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// view runs "nats stream view stream" on a terminal (nats pages only
// there), and returns what it printed, the terminal's line ends made
// "\n". With fewer messages than a page it prints them and ends.
func (n *natsCLI) view(t *testing.T, stream string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), natsTimeout)
	defer cancel()
	cmd := n.command(ctx, []string{"stream", "view", stream})
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 60, Cols: 160})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(&out, tty) // ends with EIO once nats has exited
	}()
	err = cmd.Wait()
	<-copied
	s := strings.ReplaceAll(out.String(), "\r\n", "\n")
	if err != nil {
		t.Fatalf("nats stream view %s: %v; output:\n%s", stream, err, s)
	}
	return s
}

// start runs nats with args in the background, bounded by natsTimeout; the
// test's cleanup kills it.
func (n *natsCLI) start(t *testing.T, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), natsTimeout)
	p := &proc{t: t, name: "nats " + strings.Join(args, " "), done: make(chan struct{})}
	p.cmd = n.command(ctx, args)
	p.cmd.Stdout = lockedWriter{&p.mu, &p.out}
	p.cmd.Stderr = lockedWriter{&p.mu, &p.errb}
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", p.name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		cancel()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("%s stdout:\n%s\nstderr:\n%s", p.name, tail(p.stdout(), 3000), tail(p.stderr(), 3000))
		}
	})
	return p
}

// want fails the test unless out matches every pattern (regular
// expressions, with runs of spaces in a pattern matching any white space).
func want(t *testing.T, what, out string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		re := regexp.MustCompile(strings.Join(strings.Fields(p), `\s+`))
		if !re.MatchString(out) {
			t.Errorf("%s: no match for %q in:\n%s", what, p, out)
		}
	}
}

// record is a forq_results entry as "nats kv get --raw" prints it.
type record struct {
	ID       string `json:"id"`
	Queue    string `json:"queue"`
	Type     string `json:"type"`
	State    string `json:"state"`
	Attempts int    `json:"attempts"`
	Error    string `json:"error"`
	Result   []byte `json:"result"` // base64 in the JSON
}

// kvRecord reads task id's record with "nats kv get forq_results <id> --raw",
// waiting until it reaches state.
func kvRecord(t *testing.T, n *natsCLI, id, state string) record {
	t.Helper()
	var r record
	var last string
	eventually(t, 15*time.Second, func() bool {
		out, err := n.try(t, "kv", "get", "forq_results", id, "--raw")
		last = out
		if err != nil {
			return false
		}
		r = record{}
		return json.Unmarshal([]byte(out), &r) == nil && r.State == state
	}, "nats kv get forq_results %s --raw: no record in state %s; last output:\n%s", id, state, last)
	return r
}

// TestNatsCLIQueuedTasks: with tasks waiting, the nats CLI shows the streams,
// the queue's consumer with the counts of what is queued and running, a
// task's headers and payload, and the KV buckets.
func TestNatsCLIQueuedTasks(t *testing.T) {
	n := newNatsCLI(t)
	b := startBroker(t, "", 0)
	n.url = b.url
	env := []string{"FORQ_URL=" + b.url}

	// One worker running one task at a time, kept busy by a long sleep, so
	// that the two tasks after it stay queued.
	start(t, "forq", env, "work", "--concurrency", "1")
	eventually(t, 20*time.Second, func() bool {
		_, err := n.try(t, "consumer", "info", "FORQ_TASKS", "default")
		return err == nil
	}, "the worker did not create consumer default")
	for _, args := range [][]string{
		{"enqueue", "sleep", "--payload", "30s", "--id", "busy-1"},
		{"enqueue", "echo", "--payload", `{"n":1}`, "--id", "q-1", "--max-attempts", "5", "--timeout", "1m"},
		{"enqueue", "echo", "--payload", `{"n":2}`, "--id", "q-2"},
	} {
		if code, _, stderr := run(t, nil, env, args...); code != 0 {
			t.Fatalf("forq %v: exit %d: %s", args, code, stderr)
		}
	}

	// nats consumer info FORQ_TASKS default: 1 running (outstanding ack),
	// 2 queued (unprocessed).
	var out string
	eventually(t, 15*time.Second, func() bool {
		out = n.run(t, "consumer", "info", "FORQ_TASKS", "default")
		return regexp.MustCompile(`Outstanding Acks:\s+1 out of`).MatchString(out) &&
			regexp.MustCompile(`Unprocessed Messages:\s+2\n`).MatchString(out)
	}, "nats consumer info: want 1 outstanding ack and 2 unprocessed messages; last output:\n%s", out)
	t.Logf("nats consumer info FORQ_TASKS default:\n%s", out)
	want(t, "nats consumer info FORQ_TASKS default", out,
		`Information for Consumer FORQ_TASKS > default`,
		`Name: default\n`,
		`Pull Mode: true`,
		`Filter Subject: forq.tasks.default\n`,
		`Ack Policy: Explicit`,
		`Ack Wait: 3.00s`,
	)

	out = n.run(t, "consumer", "ls", "FORQ_TASKS")
	t.Logf("nats consumer ls FORQ_TASKS:\n%s", out)
	want(t, "nats consumer ls FORQ_TASKS", out, `│ default │ forq workers of queue default │[^│]*│ 1 │ 2 │`)

	out = n.run(t, "stream", "ls")
	t.Logf("nats stream ls:\n%s", out)
	want(t, "nats stream ls", out,
		`│ FORQ_DEAD │ forq dead letters[^│]*│[^│]*│ 0 │`,
		`│ FORQ_TASKS │ forq task queues[^│]*│[^│]*│ 3 │`,
	)

	out = n.run(t, "stream", "info", "FORQ_TASKS")
	t.Logf("nats stream info FORQ_TASKS:\n%s", out)
	want(t, "nats stream info FORQ_TASKS", out,
		`Subjects: (\S+, )*forq\.tasks\.>(,|\n)`,
		`Storage: File`,
		`Retention: WorkQueue`,
		`Duplicate Window: 2m0s`,
		`Allows Fast Batch Publish: true`,
		`Direct Get: true`,
		`Messages: 3\n`,
		`First Sequence: 1 @`,
		`Last Sequence: 3 @`,
		`Active Consumers: 3\n`,
	)

	// A task by its stream sequence (tasks were enqueued in order: 1, 2, 3).
	out = n.run(t, "stream", "get", "FORQ_TASKS", "2")
	t.Logf("nats stream get FORQ_TASKS 2:\n%s", out)
	want(t, "nats stream get FORQ_TASKS 2", out,
		`Item: FORQ_TASKS#2 received .* on Subject forq.tasks.default\n`,
		`\n  Nats-Msg-Id: q-1\n`,
		`\n  Forq-Type: echo\n`,
		`\n  Forq-Max-Attempts: 5\n`,
		`\n  Forq-Timeout: 1m0s\n`,
		`\n\{"n":1\}\n`,
	)
	// The newest task of a queue, by its subject.
	out = n.run(t, "stream", "get", "FORQ_TASKS", "--last-for", "forq.tasks.default")
	t.Logf("nats stream get FORQ_TASKS --last-for forq.tasks.default:\n%s", out)
	want(t, "nats stream get FORQ_TASKS --last-for forq.tasks.default", out,
		`Item: FORQ_TASKS#3 `,
		`\n  Nats-Msg-Id: q-2\n`,
		`\n  Forq-Type: echo\n`,
		`\n\{"n":2\}\n`,
	)
	// A task with the default attempts does not carry the header.
	if strings.Contains(out, "Forq-Max-Attempts") {
		t.Errorf("task q-2 has the default attempts, yet carries Forq-Max-Attempts:\n%s", out)
	}

	// Every task in order, by direct gets (a work queue stream can be
	// paged no other way), taking none of them from the queue.
	out = n.view(t, "FORQ_TASKS")
	t.Logf("nats stream view FORQ_TASKS:\n%s", out)
	want(t, "nats stream view FORQ_TASKS", out,
		`\[1\] Subject: forq.tasks.default Received: `,
		`\n  Nats-Msg-Id: busy-1\n`,
		`\[2\] Subject: forq.tasks.default Received: `,
		`\n  Nats-Msg-Id: q-1\n(.*\n)*\{"n":1\}\n`,
		`\[3\] Subject: forq.tasks.default Received: `,
		`\n  Nats-Msg-Id: q-2\n(.*\n)*\{"n":2\}\n`,
		`Reached apparent end of data`,
	)
	out = n.run(t, "consumer", "info", "FORQ_TASKS", "default")
	want(t, "nats consumer info FORQ_TASKS default after nats stream view", out,
		`Outstanding Acks:\s+1 out of`, `Unprocessed Messages:\s+2\n`)

	out = n.run(t, "kv", "ls")
	t.Logf("nats kv ls:\n%s", out)
	want(t, "nats kv ls", out,
		`│ forq_cancel │ forq cancel requests by task ID │`,
		`│ forq_results │ forq task results by task ID │`,
	)
}

// TestNatsCLIResultRecord: a task enqueued with --wait (or --record) has a
// JSON record in forq_results that "nats kv get" shows.
func TestNatsCLIResultRecord(t *testing.T) {
	n := newNatsCLI(t)
	b := startBroker(t, "", 0)
	n.url = b.url
	env := []string{"FORQ_URL=" + b.url}
	start(t, "forq", env, "work")

	code, stdout, stderr := run(t, nil, env, "enqueue", "echo", "--payload", `{"hello":"world"}`, "--id", "rec-1", "--wait", "--wait-timeout", "30s")
	if code != 0 || strings.TrimSpace(stdout) != `{"hello":"world"}` {
		t.Fatalf("forq enqueue --wait: exit %d, stdout %q, stderr %s", code, stdout, stderr)
	}
	out := n.run(t, "kv", "get", "forq_results", "rec-1")
	t.Logf("nats kv get forq_results rec-1:\n%s", out)
	want(t, "nats kv get forq_results rec-1", out, `forq_results > rec-1 revision: \d+`, `"state":"succeeded"`)

	raw := n.stdout(t, "kv", "get", "forq_results", "rec-1", "--raw")
	t.Logf("nats kv get forq_results rec-1 --raw:\n%s", raw)
	var r record
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		t.Fatalf("nats kv get --raw is not a JSON record: %v\n%s", err, raw)
	}
	if r.ID != "rec-1" || r.Queue != "default" || r.Type != "echo" || r.State != "succeeded" || r.Attempts != 1 || string(r.Result) != `{"hello":"world"}` {
		t.Errorf("record %+v (result %q): want rec-1, default, echo, succeeded, 1 attempt, result {\"hello\":\"world\"}", r, r.Result)
	}
	// The result is bytes, so base64 in the JSON.
	want(t, "nats kv get --raw", raw, `"result":"eyJoZWxsbyI6IndvcmxkIn0="`)

	out = n.run(t, "kv", "ls", "forq_results")
	want(t, "nats kv ls forq_results", out, `(?m)^rec-1$`)
}

// TestNatsCLIPublishTask: a program in any language enqueues a task by
// publishing to forq.tasks.<queue> with forq's headers; here "nats pub".
func TestNatsCLIPublishTask(t *testing.T) {
	n := newNatsCLI(t)
	b := startBroker(t, "", 0)
	n.url = b.url
	env := []string{"FORQ_URL=" + b.url}
	start(t, "forq", env, "work")
	eventually(t, 20*time.Second, func() bool {
		_, err := n.try(t, "consumer", "info", "FORQ_TASKS", "default")
		return err == nil
	}, "the worker did not create consumer default")

	// The README's example: a plain publish.
	out := n.run(t, "pub", "forq.tasks.default", "hello", "-H", "Forq-Type:echo", "-H", "Forq-Record:1", "-H", "Nats-Msg-Id:pub-1")
	t.Logf("nats pub:\n%s", out)
	want(t, "nats pub", out, `Published 5 bytes to "forq.tasks.default"`)
	r := kvRecord(t, n, "pub-1", "succeeded")
	if r.Type != "echo" || r.Queue != "default" || r.Attempts != 1 || string(r.Result) != "hello" {
		t.Errorf("record of pub-1: %+v (result %q); want echo on default, 1 attempt, result hello", r, r.Result)
	}

	// With --jetstream the broker acknowledges the publish, and a second
	// publish of the same Nats-Msg-Id is dropped as a duplicate.
	args := []string{"pub", "--jetstream", "forq.tasks.default", "hello again", "-H", "Forq-Type:echo", "-H", "Forq-Record:1", "-H", "Nats-Msg-Id:pub-2"}
	out = n.run(t, args...)
	t.Logf("nats pub --jetstream:\n%s", out)
	want(t, "nats pub --jetstream", out, `Stored in Stream: FORQ_TASKS Sequence: \d+\n`)
	out = n.run(t, args...)
	t.Logf("nats pub --jetstream, again:\n%s", out)
	want(t, "nats pub --jetstream (again)", out, `Stored in Stream: FORQ_TASKS Sequence: \d+ Duplicate: true`)
	if r := kvRecord(t, n, "pub-2", "succeeded"); string(r.Result) != "hello again" || r.Attempts != 1 {
		t.Errorf("record of pub-2: %+v (result %q); want result \"hello again\", 1 attempt", r, r.Result)
	}

	// Every documented header is honoured: Forq-Timeout cuts the sleep short
	// and Forq-Max-Attempts 1 dead-letters it at once.
	n.run(t, "pub", "forq.tasks.default", "5s", "-H", "Nats-Msg-Id:pub-3", "-H", "Forq-Type:sleep",
		"-H", "Forq-Timeout:200ms", "-H", "Forq-Max-Attempts:1", "-H", "Forq-Record:1")
	if r := kvRecord(t, n, "pub-3", "dead"); r.Attempts != 1 || !strings.Contains(r.Error, "timed out after 200ms") {
		t.Errorf("record of pub-3: %+v; want dead after 1 attempt, timed out after 200ms", r)
	}

	// Without Forq-Type a task cannot run: it is dead-lettered, and its
	// failure recorded, at once.
	n.run(t, "pub", "forq.tasks.default", "x", "-H", "Nats-Msg-Id:pub-4")
	if r := kvRecord(t, n, "pub-4", "dead"); !strings.Contains(r.Error, "no Forq-Type header") {
		t.Errorf("record of pub-4: %+v; want dead with no Forq-Type header", r)
	}
	// A header forq cannot parse: dead-lettered at once, with the reason.
	n.run(t, "pub", "forq.tasks.default", "x", "-H", "Nats-Msg-Id:pub-5", "-H", "Forq-Type:echo", "-H", "Forq-Max-Attempts:many")
	if r := kvRecord(t, n, "pub-5", "dead"); !strings.Contains(r.Error, `header Forq-Max-Attempts: "many" is not a positive integer`) {
		t.Errorf("record of pub-5: %+v; want dead, Forq-Max-Attempts not an integer", r)
	}
	// Without Nats-Msg-Id, the task's ID is seq-<stream sequence>.
	out = n.run(t, "pub", "--jetstream", "forq.tasks.default", "anonymous", "-H", "Forq-Type:echo", "-H", "Forq-Record:1")
	m := regexp.MustCompile(`Stored in Stream: FORQ_TASKS Sequence: (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("nats pub --jetstream printed no sequence:\n%s", out)
	}
	if r := kvRecord(t, n, "seq-"+m[1], "succeeded"); string(r.Result) != "anonymous" {
		t.Errorf("record of seq-%s: %+v (result %q); want result anonymous", m[1], r, r.Result)
	}

	out = n.run(t, "stream", "info", "FORQ_DEAD")
	want(t, "nats stream info FORQ_DEAD", out, `Messages: 3\n`)
}

// TestNatsCLIDeadLetter: a task that used up its attempts is in FORQ_DEAD
// with its last error in the Forq-Error header.
func TestNatsCLIDeadLetter(t *testing.T) {
	n := newNatsCLI(t)
	b := startBroker(t, "", 0)
	n.url = b.url
	env := []string{"FORQ_URL=" + b.url}

	// Watch dead letters as they come: they are published to
	// forq.dead.<queue>. 2 messages: our readiness probe (on a subject of
	// its own, subscribed last: FORQ_DEAD would answer a probe on
	// forq.dead.>), then the task.
	sub := n.start(t, "sub", "forq.dead.>", "forq-e2e.probe", "--count", "2")
	waitSubscribed(t, b.url, sub, "forq-e2e.probe")
	start(t, "forq", env, "work")
	// The worker has no handler for type nope.
	if code, _, stderr := run(t, nil, env, "enqueue", "nope", "--payload", `{"x":1}`, "--max-attempts", "1", "--id", "dead-1"); code != 0 {
		t.Fatalf("forq enqueue: exit %d: %s", code, stderr)
	}
	if code := sub.wait(natsTimeout); code != 0 {
		t.Fatalf("nats sub forq.dead.> --count 2: exit %d", code)
	}
	out := sub.stdout()
	t.Logf("nats sub 'forq.dead.>':\n%s", out)
	want(t, "nats sub forq.dead.>", out,
		`\[#1\] Received on "forq-e2e.probe"`,
		`\[#2\] Received on "forq.dead.default"`,
		`\nForq-Error: no handler for task type "nope"`,
		`\nForq-Id: dead-1\n`,
		`\n\{"x":1\}\n`,
	)

	out = n.run(t, "stream", "info", "FORQ_DEAD")
	t.Logf("nats stream info FORQ_DEAD:\n%s", out)
	want(t, "nats stream info FORQ_DEAD", out,
		`Subjects: (\S+, )*forq\.dead\.>(,|\n)`,
		`Retention: Limits`,
		`Direct Get: true`,
		`Messages: 1\n`,
		`Last Sequence: 1 @`,
	)
	out = n.run(t, "stream", "get", "FORQ_DEAD", "1")
	t.Logf("nats stream get FORQ_DEAD 1:\n%s", out)
	want(t, "nats stream get FORQ_DEAD 1", out,
		`Item: FORQ_DEAD#1 received .* on Subject forq.dead.default\n`,
		`\n  Forq-Error: no handler for task type "nope" on this worker \(it handles \[echo exec sleep\]\)\n`,
		`\n  Forq-Attempts: 1\n`,
		`\n  Forq-Queue: default\n`,
		`\n  Forq-Id: dead-1\n`,
		`\n  Nats-Msg-Id: dead-1/dead/\d+\n`,
		`\n  Forq-Type: nope\n`,
		`\n  Forq-Max-Attempts: 1\n`,
		`\n\{"x":1\}\n`,
	)
	out = n.view(t, "FORQ_DEAD")
	t.Logf("nats stream view FORQ_DEAD:\n%s", out)
	want(t, "nats stream view FORQ_DEAD", out,
		`\[1\] Subject: forq.dead.default Received: `,
		`\n  Forq-Error: no handler for task type "nope"`,
		`\n  Forq-Id: dead-1\n`,
		`\n\{"x":1\}\n`,
		`Reached apparent end of data`,
	)
	out = n.run(t, "stream", "info", "FORQ_TASKS")
	want(t, "nats stream info FORQ_TASKS", out, `Messages: 0\n`)
	if r := kvRecord(t, n, "dead-1", "dead"); r.Attempts != 1 || !strings.Contains(r.Error, `no handler for task type "nope"`) {
		t.Errorf("record of dead-1: %+v; want dead after 1 attempt, no handler", r)
	}
}

// TestNatsCLIAdvisories: JetStream's advisories about forq's queues reach
// "nats sub" and "nats events": a worker creating its queue's consumer, and
// a failed attempt put back for a retry (a nak).
func TestNatsCLIAdvisories(t *testing.T) {
	n := newNatsCLI(t)
	b := startBroker(t, "", 0)
	n.url = b.url
	env := []string{"FORQ_URL=" + b.url}

	// Subject tokens: $JS.EVENT.ADVISORY.CONSUMER.<event>.<stream>.<consumer>.
	// 3 messages: our readiness probe, then CREATED and MSG_NAKED of the
	// queue's (normal level) consumer; its --high and --low levels have
	// consumers of their own.
	sub := n.start(t, "sub", "$JS.EVENT.ADVISORY.CONSUMER.*.FORQ_TASKS.default", "--count", "3")
	waitSubscribed(t, b.url, sub, "$JS.EVENT.ADVISORY.CONSUMER.PROBE.FORQ_TASKS.default")
	events := n.start(t, "events", "--js-advisory", "--short")
	waitSubscribed(t, b.url, events, "$JS.EVENT.ADVISORY.PROBE")

	start(t, "forq", env, "work", "--retry-base", "100ms")
	// No worker handles type nope: attempt 1 fails and is retried (a nak),
	// attempt 2 fails and is dead-lettered.
	if code, _, stderr := run(t, nil, env, "enqueue", "nope", "--max-attempts", "2", "--id", "adv-1"); code != 0 {
		t.Fatalf("forq enqueue: exit %d: %s", code, stderr)
	}
	if code := sub.wait(natsTimeout); code != 0 {
		t.Fatalf("nats sub: exit %d", code)
	}
	out := sub.stdout()
	t.Logf("nats sub '$JS.EVENT.ADVISORY.CONSUMER.*.FORQ_TASKS.>':\n%s", out)
	want(t, "nats sub advisories", out,
		`\[#2\] Received on "\$JS.EVENT.ADVISORY.CONSUMER.CREATED.FORQ_TASKS.default"\n`,
		`"type":"io.nats.jetstream.advisory.v1.consumer_action",.*"stream":"FORQ_TASKS","consumer":"default","action":"create"`,
		`\[#3\] Received on "\$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.FORQ_TASKS.default"\n`,
		`"type":"io.nats.jetstream.advisory.v1.nak",.*"stream":"FORQ_TASKS","consumer":"default",.*"deliveries":1`,
	)

	eventually(t, natsTimeout, func() bool {
		return strings.Contains(events.stdout(), "[JS Delivery NAKed]")
	}, "nats events --js-advisory showed no NAKed delivery; stdout:\n%s", events.stdout())
	out = events.stdout()
	t.Logf("nats events --js-advisory --short:\n%s", out)
	want(t, "nats events --js-advisory --short", out,
		`\[Consumer Create\] FORQ_TASKS > default\n`,
		`\[JS Delivery NAKed\] FORQ_TASKS \(1\) > default: 1 deliveries\n`,
	)
	// forq dead-letters a task itself, and acks it: JetStream's
	// MAX_DELIVERIES and MSG_TERMINATED advisories do not fire for it.
	eventually(t, 15*time.Second, func() bool {
		return streamMsgs(t, b.js(t), "FORQ_DEAD", "") == 1
	}, "adv-1 was not dead-lettered")
	if strings.Contains(events.stdout(), "Terminated") || strings.Contains(events.stdout(), "Max Deliver") {
		t.Errorf("unexpected termination or max-deliveries advisory:\n%s", events.stdout())
	}
}

// waitSubscribed waits until the nats process p, which subscribes to subject
// (or a wildcard matching it), has its subscription in place. natscli prints
// "Subscribing on ..." before it subscribes, so instead a request to subject
// is sent until it no longer finds "no responders": it then reached p, once.
func waitSubscribed(t *testing.T, url string, p *proc, subject string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	deadline := time.Now().Add(natsTimeout)
	for {
		_, err := nc.Request(subject, []byte(`{"probe":true}`), 500*time.Millisecond)
		if errors.Is(err, nats.ErrTimeout) {
			return
		}
		if !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("probe %s: %v (something other than %s answers on it)", subject, err, p.name)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not subscribe; stdout:\n%s\nstderr:\n%s", p.name, p.stdout(), p.stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
