package cli

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/forqhq/forq"
)

// Every flag of forq enqueue that describes the task lands in its field.
func TestEnqueueTaskFromFlags(t *testing.T) {
	cli, ok := parseArgs(t, "enqueue", "report", "--queue", "jobs", "--priority", "high", "--max-attempts", "5",
		"--timeout", "30s", "--id", "task-1", "--record", "--lock", "L", "--unique", "U",
		"--expire-in", "1h", "--in", "10m")
	if !ok {
		t.Fatal("the parser refused the flags")
	}
	before := time.Now()
	got, err := cli.Enqueue.task()
	if err != nil {
		t.Fatal(err)
	}
	if dl := got.Deadline.Sub(before); dl < time.Hour || dl > time.Hour+time.Minute {
		t.Errorf("deadline %s after the call, want --expire-in 1h", dl)
	}
	got.Deadline = time.Time{}
	want := forq.Task{ID: "task-1", Queue: "jobs", Type: "report", MaxAttempts: 5, Timeout: 30 * time.Second,
		Record: true, LockKey: "L", UniqueKey: "U", Priority: forq.PriorityHigh, Delay: 10 * time.Minute}
	if got.ID != want.ID || got.Queue != want.Queue || got.Type != want.Type || got.MaxAttempts != want.MaxAttempts ||
		got.Timeout != want.Timeout || got.Record != want.Record || got.LockKey != want.LockKey ||
		got.UniqueKey != want.UniqueKey || got.Priority != want.Priority || got.Delay != want.Delay || !got.At.IsZero() {
		t.Errorf("got %+v, want %+v", got, want)
	}

	// --wait records; --at and --deadline are times.
	cli, _ = parseArgs(t, "enqueue", "echo", "--wait", "--at", "2030-01-02T03:04:05Z", "--deadline", "2031-01-02T03:04:05Z")
	got, err = cli.Enqueue.task()
	if err != nil {
		t.Fatal(err)
	}
	if !got.Record || got.At != time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC) || got.Deadline != time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC) {
		t.Errorf("got record %v, at %s, deadline %s; want the record and the flags' times", got.Record, got.At, got.Deadline)
	}
	// The defaults leave the task's ID empty, for the producer to make.
	cli, _ = parseArgs(t, "enqueue", "echo")
	if got, err = cli.Enqueue.task(); err != nil || got.ID != "" || got.Queue != forq.DefaultQueue || got.MaxAttempts != forq.DefaultMaxAttempts {
		t.Errorf("defaults: got %+v, %v; want no ID, the default queue and attempts", got, err)
	}
}

// A bad flag is a usage error before anything connects: the library's
// own check of the task (its wording, its sentinel) for what a task can
// tell, the CLI's for what only the flags can.
func TestEnqueueTaskRefusesBadFlags(t *testing.T) {
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	for _, tt := range []struct {
		args []string
		want string
		is   error // the library's sentinel, if it is the library's check
	}{
		{[]string{"echo", "--queue", "a.b"}, `--queue: invalid queue name: "a.b" has '.'`, forq.ErrInvalidQueue},
		{[]string{"echo", "--queue", ""}, "--queue: invalid queue name: empty name", nil},
		{[]string{"echo", "--id", "a:b"}, `task ID "a:b" has ':'`, forq.ErrInvalidTask},
		{[]string{"echo", "--lock", "a\x01"}, "lock key", forq.ErrInvalidTask},
		{[]string{"echo", "--unique", "a\x01"}, "unique key", forq.ErrInvalidTask},
		{[]string{"echo", "--timeout", "-1s"}, "timeout -1s is negative", forq.ErrInvalidTask},
		{[]string{"echo", "--deadline", past}, "has passed", forq.ErrInvalidTask},
		{[]string{"bad type"}, `task type "bad type" has ' '`, forq.ErrInvalidTask},
		{[]string{"echo", "--priority", "urgent"}, `priority "urgent": use low, normal or high`, forq.ErrInvalidOption},
		{[]string{"echo", "--max-attempts", "0"}, "--max-attempts 0: must be at least 1", nil},
		{[]string{"echo", "--in", "-5s"}, "--in -5s: must be positive", nil},
		{[]string{"echo", "--expire-in", "-1s"}, "--expire-in -1s: must not be negative", nil},
		{[]string{"echo", "--expire-in", "1s", "--deadline", "2030-01-01T00:00:00Z"}, "give one", nil},
		{[]string{"echo", "--at", "tomorrow"}, `--at "tomorrow" is not an RFC 3339 time`, nil},
		{[]string{"echo", "--lines"}, "--lines needs --file", nil},
		{[]string{"echo", "--lines", "--file", "-", "--id", "x"}, "--id names one task", nil},
		{[]string{"echo", "--wait-timeout", "-1s"}, "--wait-timeout -1s: must not be negative", nil},
		{[]string{}, `expected "<type>"`, nil},
		{[]string{"--exec"}, "exec task without a command", forq.ErrInvalidTask},
	} {
		cli, ok := parseArgs(t, append([]string{"enqueue"}, tt.args...)...)
		if !ok {
			t.Errorf("%q: the parser refused it, want the command's check", tt.args)
			continue
		}
		_, err := cli.Enqueue.task()
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != ExitUsage || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want a usage error containing %q", tt.args, err, tt.want)
			continue
		}
		if tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("%q: got %v, want it to wrap %v", tt.args, err, tt.is)
		}
	}
}
