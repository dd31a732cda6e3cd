package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/nats-io/nats.go/jetstream"
)

const progressLines = 100_000

// writeLines writes n distinct lines to a new file and returns its path.
func writeLines(t *testing.T, n int, line func(i int) string) string {
	t.Helper()
	var b bytes.Buffer
	for i := range n {
		b.WriteString(line(i))
		b.WriteByte('\n')
	}
	f := filepath.Join(t.TempDir(), "lines")
	if err := os.WriteFile(f, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// payloads reads every task in FORQ_TASKS, without acking (the tasks stay),
// and counts each payload. No worker may have run: FORQ_TASKS is a work
// queue, so this reader must be its only consumer.
func payloads(t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	ctx := t.Context()
	c, err := js.CreateConsumer(ctx, "FORQ_TASKS", jetstream.ConsumerConfig{
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       10 * time.Minute,
		MaxAckPending: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, "FORQ_TASKS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for n := uint64(0); n < info.State.Msgs; {
		batch, err := c.Fetch(5000, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			out[string(m.Data())]++
			got++
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			t.Fatal(err)
		}
		if got == 0 {
			t.Fatalf("read %d of %d tasks, then nothing more", n, info.State.Msgs)
		}
		n += uint64(got)
	}
	return out
}

func checkEachLineOnce(t *testing.T, b *broker, n int, line func(i int) string) {
	t.Helper()
	js := b.js(t)
	if got := streamMsgs(t, js, "FORQ_TASKS", ""); got != uint64(n) {
		t.Fatalf("FORQ_TASKS holds %d tasks, want %d", got, n)
	}
	seen := payloads(t, js)
	for i := range n {
		if c := seen[line(i)]; c != 1 {
			t.Fatalf("line %d (%q) was enqueued %d times, want once", i+1, line(i), c)
		}
	}
}

var (
	barCount   = regexp.MustCompile(`\b` + strconv.Itoa(progressLines) + `/` + strconv.Itoa(progressLines) + `\b`)
	barRate    = regexp.MustCompile(`\d+ tasks/(s|min|hr)`)
	barElapsed = regexp.MustCompile(`\[\d+[^\]\s]*s(:\d+[^\]\s]*s)?\]`) // [elapsed:ETA] or, done, [elapsed]
	ansi       = regexp.MustCompile("\x1b\\[")
	plainLine  = regexp.MustCompile(`^enqueued (\d+)/(\d+) tasks \((\d+)/s, ETA ([^)]+)\)$`)
	plainFinal = regexp.MustCompile(`^enqueued (\d+)/(\d+) tasks in \S+ \((\d+)/s\)$`)
	drainLine  = regexp.MustCompile(`^drained (\d+)/(\d+) tasks, (\d+) left \((\d+)/s, ETA ([^)]+)\)$`)
	drainFinal = regexp.MustCompile(`^drained (\d+)/(\d+) tasks in \S+ \((\d+)/s\)$`)
)

// Done-when 4: a bulk enqueue of 100,000 lines from a file shows a
// progress bar on a pseudo-terminal, and enqueues every line once.
func TestProgressBarOnTerminal(t *testing.T) {
	b := startBroker(t, "", 0)
	line := func(i int) string { return fmt.Sprintf(`{"n":%d,"src":"tty"}`, i) }
	f := writeLines(t, progressLines, line)

	cmd := exec.Command(bin["forq"], "enqueue", "echo", "--file", f, "--lines", "--quiet")
	cmd.Env = append(os.Environ(), "FORQ_URL="+b.url) // --progress auto, the default
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 120})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var out bytes.Buffer
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(&out, tty) // ends with EIO once the command has exited
		copied <- err
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err = <-waited:
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		<-waited
		t.Fatalf("enqueue still running after 3m; output so far:\n%q", tail(out.String(), 2000))
	}
	select {
	case <-copied:
	case <-time.After(30 * time.Second):
		t.Fatal("the terminal was not closed after the command exited")
	}
	s := out.String()
	if err != nil {
		t.Fatalf("enqueue: %v; output:\n%q", err, tail(s, 3000))
	}
	t.Logf("terminal output (last 600 bytes): %q", tail(s, 600))

	if n := strings.Count(s, "\r"); n < 3 {
		t.Errorf("%d carriage returns: the bar was not redrawn in place", n)
	}
	// The last redraw of the bar: the final count, a rate, the elapsed time.
	lastBar := ""
	for _, part := range strings.Split(s, "\r") {
		if strings.Contains(part, "enqueue ") && strings.Contains(part, "|") {
			lastBar = part
		}
	}
	if lastBar == "" {
		t.Fatalf("no progress bar drawn:\n%q", tail(s, 3000))
	}
	if !barCount.MatchString(lastBar) || !strings.Contains(lastBar, "100%") {
		t.Errorf("the bar does not end at %d/%d (100%%): %q", progressLines, progressLines, lastBar)
	}
	if !barRate.MatchString(s) {
		t.Errorf("no rate (N tasks/s) on the bar:\n%q", tail(s, 3000))
	}
	if !barElapsed.MatchString(s) {
		t.Errorf("no elapsed/ETA marker ([2s:3s]) on the bar:\n%q", tail(s, 3000))
	}
	if !strings.Contains(s, fmt.Sprintf("enqueued %d tasks to queue default", progressLines)) {
		t.Errorf("no summary line:\n%q", tail(s, 3000))
	}
	checkEachLineOnce(t, b, progressLines, line)
}

// Done-when 4, off a terminal: plain lines on stderr, the task IDs alone
// on stdout, every line enqueued once.
func TestProgressPlainLines(t *testing.T) {
	b := startBroker(t, "", 0)
	line := func(i int) string { return fmt.Sprintf(`{"n":%d,"src":"pipe"}`, i) }
	f := writeLines(t, progressLines, line)

	// A short interval, so that several lines show however fast it goes.
	code, stdout, stderr := run(t, nil, []string{"FORQ_URL=" + b.url, "FORQ_PROGRESS_INTERVAL=100ms"},
		"enqueue", "echo", "--file", f, "--lines")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	t.Logf("stderr:\n%s", stderr)
	if strings.Contains(stderr, "\r") || ansi.MatchString(stderr) {
		t.Errorf("stderr off a terminal has carriage returns or ANSI escapes:\n%q", stderr)
	}
	var periodic, final int
	last := int64(-1)
	for l := range strings.SplitSeq(strings.TrimSpace(stderr), "\n") {
		if m := plainLine.FindStringSubmatch(l); m != nil {
			periodic++
			n, _ := strconv.ParseInt(m[1], 10, 64)
			if n < last {
				t.Errorf("count went back from %d: %q", last, l)
			}
			last = n
			if m[2] != strconv.Itoa(progressLines) {
				t.Errorf("total %s, want %d: %q", m[2], progressLines, l)
			}
			continue
		}
		if m := plainFinal.FindStringSubmatch(l); m != nil {
			final++
			if m[1] != strconv.Itoa(progressLines) || m[2] != strconv.Itoa(progressLines) {
				t.Errorf("final line %q, want %d/%d", l, progressLines, progressLines)
			}
		}
	}
	if periodic == 0 || final != 1 {
		t.Errorf("%d periodic and %d final progress lines, want some and one:\n%s", periodic, final, stderr)
	}
	// stdout is the IDs, one per line, nothing else.
	ids := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	uniq := map[string]bool{}
	for _, id := range ids {
		if len(id) != 36 {
			t.Fatalf("stdout line %q is not a task ID", id)
		}
		uniq[id] = true
	}
	if len(ids) != progressLines || len(uniq) != progressLines {
		t.Errorf("stdout has %d IDs (%d distinct), want %d", len(ids), len(uniq), progressLines)
	}
	checkEachLineOnce(t, b, progressLines, line)
}

// forq pool --until-empty off a terminal: plain lines show the backlog
// falling to 0, then the pool exits 0. The tasks come from standard input.
func TestProgressPoolDrain(t *testing.T) {
	b := startBroker(t, "", 0)
	env := []string{"FORQ_URL=" + b.url, "FORQ_PROGRESS_INTERVAL=100ms"}
	const n = 150
	var in strings.Builder
	for range n {
		in.WriteString("20ms\n")
	}
	code, _, stderr := run(t, strings.NewReader(in.String()), env, "enqueue", "sleep", "--file", "-", "--lines", "--quiet")
	if code != 0 {
		t.Fatalf("enqueue: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, fmt.Sprintf("enqueued %d/%d tasks in ", n, n)) {
		t.Errorf("no final progress line for the enqueue from stdin:\n%s", stderr)
	}

	code, _, stderr = run(t, nil, env, "pool", "-n", "2", "--until-empty", "--scale-interval", "100ms")
	if code != 0 {
		t.Fatalf("pool: exit %d: %s", code, stderr)
	}
	if strings.Contains(stderr, "\r") || ansi.MatchString(stderr) {
		t.Errorf("stderr off a terminal has carriage returns or ANSI escapes:\n%q", stderr)
	}
	var left []int
	finals := 0
	for l := range strings.SplitSeq(stderr, "\n") {
		if m := drainLine.FindStringSubmatch(l); m != nil {
			d, _ := strconv.Atoi(m[1])
			tot, _ := strconv.Atoi(m[2])
			r, _ := strconv.Atoi(m[3])
			if tot != n || d+r != tot {
				t.Errorf("line %q: want done + left = total = %d", l, n)
			}
			left = append(left, r)
		}
		if m := drainFinal.FindStringSubmatch(l); m != nil {
			finals++
			if m[1] != strconv.Itoa(n) || m[2] != strconv.Itoa(n) {
				t.Errorf("final line %q, want %d/%d", l, n, n)
			}
		}
	}
	if len(left) < 2 || finals != 1 {
		t.Fatalf("%d drain lines and %d final lines, want at least 2 and 1:\n%s", len(left), finals, stderr)
	}
	for i := 1; i < len(left); i++ {
		if left[i] > left[i-1] {
			t.Errorf("the backlog rose from %d to %d: %v", left[i-1], left[i], left)
		}
	}
	if left[0] <= left[len(left)-1] {
		t.Errorf("the backlog did not fall: %v", left)
	}
	if got := streamMsgs(t, b.js(t), "FORQ_TASKS", ""); got != 0 {
		t.Errorf("%d tasks still queued after the pool drained the queue", got)
	}
}
