package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/producer"
)

// runForq runs the forq command in this process and returns its exit code,
// standard output and standard error.
func runForq(args ...string) (int, string, string) {
	var out, errs bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &errs)
	return code, out.String(), errs.String()
}

// tasksQueue starts a broker with a queue "tq" holding a running task (on
// a worker of this process), two queued ones (paused) and a delayed one;
// it returns the broker's URL and the tasks' IDs in the order forq tasks
// lists them.
func tasksQueue(t *testing.T) (string, []string) {
	t.Helper()
	s := testutil.Broker(t)
	nc := testutil.Connect(t, s.ClientURL())
	ctx := t.Context()
	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := consumer.New(ctx, nc, consumer.Config{Queues: []string{"tq"}, Concurrency: 1, Grace: 100 * time.Millisecond,
		StatusInterval: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	w.HandleFunc("t", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		<-ctx.Done() // runs until the worker stops
		return nil, ctx.Err()
	})
	runCtx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = w.Run(runCtx) })
	t.Cleanup(func() { stop(); wg.Wait() })
	enqueue := func(payload []byte, opts ...producer.Option) string {
		info, err := p.Enqueue(ctx, forq.Task{Type: "t", Payload: payload}, append(opts, producer.WithQueue("tq"), producer.WithRecord())...)
		if err != nil {
			t.Fatal(err)
		}
		return info.ID
	}
	running := enqueue([]byte("run"))
	in, err := admin.New(ctx, nc, admin.Config{})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		ts, err := in.Tasks(ctx, "tq", admin.WithState(admin.StateRunning))
		return err == nil && len(ts) == 1
	}, "the task is not listed as running")
	if _, err := in.Pause(ctx, "tq", admin.PauseForever, 0); err != nil {
		t.Fatal(err)
	}
	text := enqueue([]byte(`{"text": "` + strings.Repeat("word ", 20) + `"}`))
	binary := enqueue([]byte{0xff, 0xfe, 0x00, 0x01})
	later := enqueue([]byte("later"), producer.WithDelay(time.Hour))
	return s.ClientURL(), []string{running, text, binary, later}
}

// forq tasks prints a queue's tasks as a table, or as JSON, and refuses
// bad flags (exit 2) and an unknown queue (exit 1), naming them.
func TestTasksCommand(t *testing.T) {
	url, ids := tasksQueue(t)
	code, out, errs := runForq("tasks", "--url", url, "-q", "tq")
	if code != 0 {
		t.Fatalf("forq tasks: exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[0], "PAYLOAD") {
		t.Fatalf("forq tasks: got %q, want a header and 4 tasks", out)
	}
	// The cells but AGE and DUE's time.
	host, _ := os.Hostname()
	want := []string{
		fmt.Sprintf("%s|t|running|normal|1/3|-|%s:%d|3|run", ids[0], host, os.Getpid()),
		ids[1] + `|t|queued|normal|0/3|-|-|112|{"text": "word word word word word word…`,
		ids[2] + "|t|queued|normal|0/3|-|-|4|(binary)",
		ids[3] + "|t|scheduled|normal|0/3|due|-|5|later",
	}
	for i, l := range lines[1:] {
		cells := regexp.MustCompile(`\s{2,}`).Split(l, -1)
		if len(cells) != 10 {
			t.Errorf("line %d: %q has %d cells, want 10", i+1, l, len(cells))
			continue
		}
		if cells[6] != "-" {
			cells[6] = "due"
		}
		if got := strings.Join(append(cells[:5:5], cells[6:]...), "|"); got != want[i] {
			t.Errorf("line %d: got %s, want %s", i+1, got, want[i])
		}
	}

	code, out, errs = runForq("tasks", "--url", url, "-q", "tq", "--state", "scheduled,queued", "--limit", "2", "--preview", "3", "--json")
	if code != 0 {
		t.Fatalf("forq tasks --json: exit %d: %s", code, errs)
	}
	var got []taskJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("forq tasks --json: %v: %q", err, out)
	}
	if len(got) != 2 || got[0].ID != ids[1] || got[1].ID != ids[2] || string(got[0].Preview) != `{"t` || got[0].Size != 112 || got[0].Record != nil {
		// A recorded task gets its record when a worker starts it: a
		// queued one has none.
		t.Errorf("forq tasks --state scheduled,queued --limit 2 --preview 3 --json: %+v; want the two queued tasks, previews of 3 bytes, no record yet", got)
	}

	for _, c := range []struct {
		args       []string
		code       int
		errContent string
	}{
		{[]string{"--state", "done"}, 2, `task state "done"`},
		{[]string{"--type", "a b"}, 2, `"a b"`},
		{[]string{"--limit", "0"}, 2, "--limit 0"},
		{[]string{"--preview", "-1"}, 2, "--preview -1"},
		{[]string{"-q", "bad.queue"}, 2, `"bad.queue"`},
		{[]string{"-q", "nosuch"}, 1, "queue nosuch: no such queue"},
	} {
		code, _, errs := runForq(append([]string{"tasks", "--url", url, "-q", "tq"}, c.args...)...)
		if code != c.code || !strings.Contains(errs, "forq tasks: ") || !strings.Contains(errs, c.errContent) {
			t.Errorf("forq tasks %v: exit %d, %q; want exit %d naming %q", c.args, code, errs, c.code, c.errContent)
		}
	}
	code, out, _ = runForq("tasks", "--url", url, "-q", "tq", "--state", "running,scheduled", "--limit", "1", "--preview", "0")
	if code != 0 || !strings.Contains(out, "running") || !strings.HasSuffix(strings.TrimSpace(out), "…") {
		t.Errorf("forq tasks --preview 0: exit %d, %q; want the running task, its payload cut", code, out)
	}
}

// A payload's preview is one line, cut at a whole character, "…" where
// the payload goes on.
func TestTaskPreview(t *testing.T) {
	for _, c := range []struct {
		preview string
		size    int
		want    string
	}{
		{"", 0, "(empty)"},
		{"", 5, "…"},
		{"hello", 5, "hello"},
		{"hel", 5, "hel…"},
		{"a\nb\tc", 5, "a b c"},
		{"caf\xc3", 5, "caf…"}, // é cut in two
		{"\xff\xfe", 2, "(binary)"},
		{"\xff\xfeab", 9, "(binary)"},
		{"red \x1b[31mx\x07", 9, `red \x1b[31mx\a`}, // no escape reaches the terminal
		{"a\u200bb", 5, `a\u200bb`},
		{`a\b`, 3, `a\b`},
	} {
		if got := preview(admin.TaskInfo{Preview: []byte(c.preview), Size: c.size}); got != c.want {
			t.Errorf("preview(%q of %d bytes): got %q, want %q", c.preview, c.size, got, c.want)
		}
	}
}

// AGE is short and as precise as a reader needs.
func TestTaskAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                                 "0s",
		1234 * time.Millisecond:                      "1.2s",
		3*time.Minute + 4400*time.Millisecond:        "3m4s",
		5*time.Hour + 6*time.Minute + 7*time.Second:  "5h6m",
		7*24*time.Hour + 8*time.Hour + 9*time.Minute: "7d8h",
	} {
		if got := age(d); got != want {
			t.Errorf("age(%s) = %q, want %q", d, got, want)
		}
	}
}
