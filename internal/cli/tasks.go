package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/nats-io/nats.go"
)

// TasksCmd is "forq tasks".
type TasksCmd struct {
	ConnFlags `embed:""`

	Queue   string   `short:"q" default:"default" help:"Queue whose tasks to list."`
	State   []string `placeholder:"STATE" help:"Only tasks in these states: running, retrying, queued, scheduled (comma-separated; default all four)."`
	Type    []string `placeholder:"TYPE" help:"Only tasks of these types (comma-separated; default all)."`
	Limit   int      `short:"n" default:"100" help:"List at most this many tasks."`
	Preview int      `default:"40" help:"Show this many bytes of each payload."`
	JSON    bool     `help:"Print a JSON array of the tasks (previews in base64, headers and records included)."`
}

// Help explains what the states mean.
func (c *TasksCmd) Help() string {
	return `Lists running tasks first, then retrying ones, then queued ones (highest
priority first, then in the order they were enqueued: the order workers
take them), then scheduled ones (delayed, not due yet).

Running: a live worker runs it now; WORKER names it (host:PID), from the
workers' status, rewritten every 2s (a task that started since shows as
retrying until then). Retrying: delivered and not acknowledged, but no
worker runs it: waiting for its redelivery after a failed attempt's
back-off, a hand-back by a worker that stopped, a snooze or a busy lock.
ATTEMPTS comes from the worker (running) or the task's record. AGE is
the time since the broker stored the task (for a delayed one that came
due: since it came due). PAYLOAD shows the first --preview bytes, with
what is not printable escaped.

Each task listed costs a round trip to the broker: --limit bounds them.`
}

// Run lists the tasks.
func (c *TasksCmd) Run(env *Env) error {
	if err := forq.ValidateQueue(c.Queue); err != nil {
		return usageErr("--queue: %v", err)
	}
	switch {
	case c.Limit < 1:
		return usageErr("--limit %d: must be at least 1", c.Limit)
	case c.Preview < 0:
		return usageErr("--preview %d: must not be negative", c.Preview)
	}
	opts := []admin.ListOption{admin.WithLimit(c.Limit), admin.WithPreview(c.Preview)}
	if len(c.Type) > 0 {
		types := make([]string, len(c.Type))
		for i, t := range c.Type {
			types[i] = strings.TrimSpace(t)
			if err := forq.ValidateType(types[i]); err != nil {
				return usageErr("--type: %v", err)
			}
		}
		opts = append(opts, admin.WithType(types...))
	}
	if len(c.State) > 0 {
		states := make([]admin.TaskState, len(c.State))
		for i, s := range c.State {
			st, err := admin.ParseTaskState(strings.TrimSpace(s))
			if err != nil {
				return usageErr("--state: %v", err)
			}
			states[i] = st
		}
		opts = append(opts, admin.WithState(states...))
	}
	ctx, in, done, err := c.inspector("forq tasks", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	ts, err := in.Tasks(ctx, c.Queue, opts...)
	if err != nil {
		return err
	}
	if c.JSON {
		out := make([]taskJSON, len(ts))
		for i, t := range ts {
			out[i] = newTaskJSON(t)
		}
		b, _ := json.Marshal(out)
		fmt.Fprintf(env.Stdout, "%s\n", b)
		return nil
	}
	if len(ts) == 0 {
		fmt.Fprintf(env.Stdout, "no %s tasks in queue %s\n", c.stateWords(), c.Queue)
		return nil
	}
	return printTasks(env.Stdout, ts, time.Now())
}

// stateWords names the states asked for: "running, queued or scheduled".
func (c *TasksCmd) stateWords() string {
	states := c.State
	if len(states) == 0 {
		states = []string{"running", "retrying", "queued", "scheduled"}
	}
	if len(states) == 1 {
		return strings.TrimSpace(states[0])
	}
	for i := range states {
		states[i] = strings.TrimSpace(states[i])
	}
	return strings.Join(states[:len(states)-1], ", ") + " or " + states[len(states)-1]
}

// printTasks prints the table of "forq tasks" at now.
func printTasks(w io.Writer, ts []admin.TaskInfo, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tSTATE\tPRIORITY\tATTEMPTS\tAGE\tDUE\tWORKER\tSIZE\tPAYLOAD")
	for _, t := range ts {
		due, worker := "-", "-"
		if !t.Due.IsZero() {
			due = t.Due.Local().Format(time.DateTime)
		}
		if t.Worker != nil {
			worker = t.Worker.Host + ":" + strconv.Itoa(t.Worker.PID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%d\t%s\n", t.ID, t.Type, t.State, t.Priority, t.Attempts, t.MaxAttempts,
			age(now.Sub(t.Enqueued)), due, printable(worker), t.Size, preview(t))
	}
	return tw.Flush()
}

// age is an AGE cell: d rounded to what a reader needs (1.2s, 3m4s, 5h6m,
// 7d8h).
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
	h := int(d.Hours())
	return fmt.Sprintf("%dd%dh", h/24, h%24)
}

// preview is a task's PAYLOAD cell: its preview on one line, "…" where it
// is cut, what is not printable escaped (\x1b, \u200b: a payload cannot
// move the cursor or ring the bell); "(binary)" for one that is not UTF-8
// text.
func preview(t admin.TaskInfo) string {
	text := trimPartialRune(t.Preview)
	switch {
	case t.Size == 0:
		return "(empty)"
	case len(t.Preview) == 0:
		return "…"
	case !utf8.Valid(text):
		return "(binary)"
	}
	s := printable(strings.Join(strings.Fields(string(text)), " "))
	if len(t.Preview) < t.Size {
		s += "…"
	}
	return s
}

// printable returns s with every rune that is not printable (a control
// character, an invalid byte, a format character) escaped as Go would
// quote it, and backslashes left as they are.
func printable(s string) string {
	clean := true
	for _, r := range s {
		if !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsPrint(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r) // '\x1b', '\u200b'
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

// trimPartialRune drops the bytes of a UTF-8 sequence that the preview's
// limit cut in two.
func trimPartialRune(b []byte) []byte {
	for i := 1; i < utf8.UTFMax && i <= len(b); i++ {
		if c := b[len(b)-i]; utf8.RuneStart(c) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return b[:len(b)-i]
			}
			break
		}
	}
	return b
}

// taskJSON is a task as "forq tasks --json" prints it.
type taskJSON struct {
	ID          string       `json:"id"`
	Queue       string       `json:"queue"`
	Type        string       `json:"type"`
	State       string       `json:"state"`
	Priority    string       `json:"priority"`
	Seq         uint64       `json:"seq"`
	Enqueued    time.Time    `json:"enqueued"`
	Due         time.Time    `json:"due,omitzero"`
	Deadline    time.Time    `json:"deadline,omitzero"`
	Attempts    int          `json:"attempts"`
	MaxAttempts int          `json:"max_attempts"`
	Size        int          `json:"size"`
	Preview     []byte       `json:"preview"`
	Header      nats.Header  `json:"headers"`
	Record      *forq.Result `json:"record,omitempty"`
	// Worker is the worker that runs a running task.
	Worker *admin.TaskWorker `json:"worker,omitempty"`
}

func newTaskJSON(t admin.TaskInfo) taskJSON {
	return taskJSON{ID: t.ID, Queue: t.Queue, Type: t.Type, State: string(t.State), Priority: t.Priority.String(), Seq: t.Seq,
		Enqueued: t.Enqueued, Due: t.Due, Deadline: t.Deadline, Attempts: t.Attempts, MaxAttempts: t.MaxAttempts,
		Size: t.Size, Preview: t.Preview, Header: t.Header, Record: t.Record, Worker: t.Worker}
}
