package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/producer"
)

// EnqueueCmd is "forq enqueue".
type EnqueueCmd struct {
	ConnFlags     `embed:""`
	TopologyFlags `embed:""`

	Type        string        `arg:"" optional:"" help:"Task type: echo and sleep are built in; your workers define others. Not with --exec."`
	Exec        bool          `help:"Enqueue an exec task: the command after '--' runs on a worker started with --allow-exec; --wait exits with its exit code."`
	Env         []string      `help:"With --exec: NAME=value added to the command's environment (repeatable)."`
	Dir         string        `help:"With --exec: the command's working directory on the worker."`
	Argv        []string      `arg:"" optional:"" help:"With --exec: the command and its arguments, after '--'."`
	Payload     *string       `help:"Payload of the task (opaque bytes; JSON by convention)." xor:"source"`
	File        string        `short:"f" help:"Read the payload from this file, '-' for standard input." xor:"source"`
	Lines       bool          `help:"With --file: one task per non-empty line."`
	Queue       string        `short:"q" default:"default" help:"Queue to enqueue to."`
	Priority    string        `short:"p" default:"normal" help:"Priority level within the queue: low, normal or high. Workers start higher levels first."`
	MaxAttempts int           `default:"3" help:"How many times the task may run before it is dead-lettered."`
	Timeout     time.Duration `default:"0" help:"Bound on each attempt, e.g. 30s; 0 is none."`
	ID          string        `help:"Task ID (default: a new UUIDv7). The same ID again within the duplicate window is not enqueued twice."`
	Record      bool          `help:"Record the task's state and result, to look up with 'forq result'."`
	Lock        string        `name:"lock" placeholder:"KEY" help:"Lock key: tasks with the same lock key never run at the same time, on any worker. Waiting for the lock does not use up attempts."`
	Unique      string        `name:"unique" placeholder:"KEY" help:"Unique key: while a task with this key is queued or running, enqueue nothing and print that task's ID."`
	ExpireIn    time.Duration `default:"0" help:"Drop the task, unrun (state expired), if no worker has started it within this time; 0 is never."`
	Deadline    string        `placeholder:"TIME" help:"Like --expire-in, at an RFC 3339 time, e.g. 2026-12-01T09:00:00Z."`
	Wait        bool          `short:"w" help:"Wait for the result and print it; exit 1 if the task failed."`
	WaitTimeout time.Duration `default:"0" help:"With --wait: give up after this long; 0 waits forever."`
	Quiet       bool          `help:"Do not print task IDs."`
	In          time.Duration `help:"Delay: queue the task this long from now (e.g. 10m), by the broker's clock." xor:"when"`
	At          string        `help:"Queue the task at this time, RFC 3339 (e.g. 2026-12-01T09:00:00Z), by the broker's clock." xor:"when"`

	ProgressFlags `embed:""`
}

const bulkChunk = 5000

// Run enqueues the task(s), and with --wait waits for their results.
func (c *EnqueueCmd) Run(env *Env) error {
	task, err := c.task()
	if err != nil {
		return err
	}
	payloads, err := c.payloads(env)
	if err != nil {
		return err
	}
	if err := c.checkPayloads(payloads); err != nil {
		return err
	}
	nc, err := c.connect("forq enqueue", env.Log)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := signalContext()
	defer stop()
	p, err := producer.New(ctx, nc, producer.Config{Replicas: c.Replicas, ResultTTL: c.ResultTTL, DuplicateWindow: c.DuplicateWindow})
	if err != nil {
		return err
	}
	var ids []string
	if c.Lines {
		ids, err = c.enqueueLines(ctx, env, p, task, payloads)
	} else {
		ids, err = c.enqueueOne(ctx, env, p, task, payloads[0])
	}
	if err != nil || !c.Wait {
		return err
	}
	return c.wait(ctx, env, p, ids)
}

// task builds the task the flags describe, its payload aside (the one
// task, or the template of each line's), and has the library validate it
// (forq.Task.Validate): the one check of what a task may be, before
// anything connects. What the task cannot tell is checked here: how the
// flags go together, the values a flag may not take although the task's
// field may (--queue "" and --max-attempts 0 mean the defaults there),
// and the flags that are not the task's fields.
func (c *EnqueueCmd) task() (forq.Task, error) {
	if err := c.command(); err != nil {
		return forq.Task{}, err
	}
	if err := c.checkFlags(); err != nil {
		return forq.Task{}, err
	}
	t := forq.Task{
		ID: c.ID, Queue: c.Queue, Type: c.Type, MaxAttempts: c.MaxAttempts, Timeout: c.Timeout,
		Record: c.Record || c.Wait, LockKey: c.Lock, UniqueKey: c.Unique, Delay: c.In,
	}
	var err error
	if t.Priority, err = forq.ParsePriority(c.Priority); err != nil {
		return forq.Task{}, usageErr("--priority: %w", err)
	}
	if t.Deadline, err = c.deadline(); err != nil {
		return forq.Task{}, err
	}
	if t.At, err = parseTime("--at", c.At); err != nil {
		return forq.Task{}, err
	}
	check := t // Validate fills the defaults in, a new ID among them
	if err := check.Validate(); err != nil {
		if errors.Is(err, forq.ErrInvalidQueue) {
			return forq.Task{}, usageErr("--queue: %w", err)
		}
		return forq.Task{}, usageErr("%w", err)
	}
	return t, nil
}

// command checks that a task type is given, or with --exec turns the
// command after '--' into the exec task's type and payload.
func (c *EnqueueCmd) command() error {
	switch {
	case c.Exec:
		return c.execPayload()
	case len(c.Argv) > 0:
		return usageErr("unexpected arguments %q (a command to run needs --exec)", c.Argv)
	case c.Type == "":
		return usageErr(`expected "<type>" (e.g. echo), or --exec -- COMMAND...`)
	}
	return nil
}

// checkFlags checks what forq.Task.Validate cannot: see task.
func (c *EnqueueCmd) checkFlags() error {
	switch {
	case c.Queue == "":
		// The task's empty queue is the default one, which the user did
		// not name.
		return usageErr("--queue: invalid queue name: empty name")
	case c.MaxAttempts < 1:
		// The task's 0 is the default.
		return usageErr("--max-attempts %d: must be at least 1", c.MaxAttempts)
	case c.In < 0:
		return usageErr("--in %s: must be positive", c.In)
	case c.ExpireIn < 0:
		return usageErr("--expire-in %s: must not be negative", c.ExpireIn)
	case c.ExpireIn > 0 && c.Deadline != "":
		return usageErr("--expire-in and --deadline both set a deadline; give one")
	case c.Lines && c.File == "":
		return usageErr("--lines needs --file (use --file - for standard input)")
	case c.Lines && c.ID != "":
		return usageErr("--id names one task; it cannot go with --lines")
	case c.Lines && c.Unique != "":
		return usageErr("--unique names one task; it cannot go with --lines")
	}
	return validateWaitTimeout(c.WaitTimeout)
}

// deadline returns the deadline --expire-in or --deadline sets, zero if
// none.
func (c *EnqueueCmd) deadline() (time.Time, error) {
	if c.ExpireIn > 0 {
		return time.Now().Add(c.ExpireIn), nil
	}
	return parseTime("--deadline", c.Deadline)
}

// parseTime parses the RFC 3339 time of flag, zero if s is empty.
func parseTime(flag, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageErr("%s %q is not an RFC 3339 time like 2026-12-01T09:00:00Z", flag, s)
	}
	return t, nil
}

// checkPayloads checks the payloads of a built-in task type, so that a
// malformed one is refused before anything is enqueued.
func (c *EnqueueCmd) checkPayloads(payloads [][]byte) error {
	v := builtins[c.Type].validate
	if v == nil {
		return nil
	}
	for i, p := range payloads {
		if err := v(p); err != nil {
			if c.Lines {
				return usageErr("line %d: %v; nothing was enqueued", i+1, err)
			}
			return usageErr("--payload: %v", err)
		}
	}
	return nil
}

// enqueueOne enqueues task with payload and returns its ID.
func (c *EnqueueCmd) enqueueOne(ctx context.Context, env *Env, p *producer.Producer, task forq.Task, payload []byte) ([]string, error) {
	task.Payload = payload
	info, err := p.Enqueue(ctx, task)
	if err != nil {
		return nil, enqueueErr(err)
	}
	if !c.Quiet && !c.Wait {
		fmt.Fprintln(env.Stdout, info.ID)
	}
	switch {
	case info.Duplicate && c.Unique != "" && info.Sequence == 0:
		env.Log.Warn("a task with this unique key is queued or running; not enqueued again", "unique", c.Unique, "task", info.ID)
	case info.Duplicate:
		env.Log.Warn("a task with this ID was already enqueued; not enqueued again", "task", info.ID)
	}
	return []string{info.ID}, nil
}

// enqueueLines enqueues one task like task for each payload, in chunks,
// and returns the IDs of those enqueued.
func (c *EnqueueCmd) enqueueLines(ctx context.Context, env *Env, p *producer.Producer, task forq.Task, payloads [][]byte) ([]string, error) {
	// Progress on stderr; IDs printed line by line on the same
	// terminal would break a bar, so they get plain lines.
	printIDs := !c.Quiet && !c.Wait
	prog := newProgress(c.Progress, env.Stderr, c.ProgressInterval, printIDs && isTerminal(env.Stdout),
		progressLabels{desc: "enqueue", verb: "enqueued", unit: "tasks"}, int64(len(payloads)))
	defer prog.Finish()
	var ids []string
	for start := 0; start < len(payloads); start += bulkChunk {
		chunk := payloads[start:min(start+bulkChunk, len(payloads))]
		tasks := make([]forq.Task, len(chunk))
		for i, pl := range chunk {
			tasks[i] = task
			tasks[i].Payload = pl
		}
		infos, err := p.EnqueueMany(ctx, tasks)
		for i, info := range infos {
			if info.ID != "" {
				ids = append(ids, info.ID)
				if printIDs {
					fmt.Fprintln(env.Stdout, info.ID)
				}
			} else if be := (*producer.BatchError)(nil); errors.As(err, &be) && be.Errs[i] != nil {
				env.Log.Error("not enqueued", "line", start+i+1, "err", be.Errs[i])
			}
		}
		prog.Set(int64(len(ids)))
		if err != nil {
			prog.Finish()
			return nil, fmt.Errorf("enqueued %d of %d tasks: %w", len(ids), len(payloads), enqueueErr(err))
		}
	}
	prog.Finish()
	fmt.Fprintf(env.Stderr, "enqueued %d tasks to queue %s\n", len(ids), task.Queue)
	return ids, nil
}

// wait waits for the tasks' results and prints them: an exec task's as
// its command would have (and its exit code is ours), any other's result
// on stdout, or how it failed on stderr.
func (c *EnqueueCmd) wait(ctx context.Context, env *Env, p *producer.Producer, ids []string) error {
	wctx, cancel := ctxWithTimeout(ctx, c.WaitTimeout)
	defer cancel()
	failed := 0
	for _, id := range ids {
		r, err := p.Wait(wctx, id)
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("task %s: no result within --wait-timeout %s (it stays queued; see 'forq result %s')", id, c.WaitTimeout, id)
		}
		if err != nil {
			return err
		}
		if code, ok := printExec(env, r); ok {
			// subprocess.call: the command's exit code is ours.
			if code != 0 {
				return &exitError{code: code}
			}
			continue
		}
		if r.State != forq.StateSucceeded {
			failed++
			fmt.Fprintf(env.Stderr, "task %s %s after %d attempt(s): %s\n", r.ID, r.State, r.Attempts, r.Error)
			continue
		}
		_, _ = env.Stdout.Write(r.Result) // as for fmt.Fprint: see .golangci.yml
		if len(r.Result) > 0 && r.Result[len(r.Result)-1] != '\n' {
			fmt.Fprintln(env.Stdout)
		}
	}
	if failed > 0 {
		return &exitError{code: ExitError, err: fmt.Errorf("%d of %d tasks failed", failed, len(ids))}
	}
	return nil
}

// payloads reads the payload(s) from --payload, --file or stdin.
func (c *EnqueueCmd) payloads(env *Env) ([][]byte, error) {
	if c.File == "" {
		if c.Payload == nil {
			return [][]byte{nil}, nil
		}
		return [][]byte{[]byte(*c.Payload)}, nil
	}
	r := env.Stdin
	if c.File != "-" {
		f, err := os.Open(c.File)
		if err != nil {
			return nil, usageErr("--file: %v", err)
		}
		defer func() { _ = f.Close() }() // only read: a failed close loses nothing
		r = f
	}
	if !c.Lines {
		b, err := io.ReadAll(r)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", c.File, err)
		}
		return [][]byte{b}, nil
	}
	var out [][]byte
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 64<<20)
	for sc.Scan() {
		line := bytes.TrimRight(sc.Bytes(), "\r")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		out = append(out, bytes.Clone(line))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", c.File, err)
	}
	if len(out) == 0 {
		return nil, usageErr("--file %s has no non-empty line; nothing to enqueue", c.File)
	}
	return out, nil
}

func enqueueErr(err error) error {
	if errors.Is(err, forq.ErrPayloadTooLarge) || errors.Is(err, forq.ErrInvalidTask) || errors.Is(err, forq.ErrInvalidOption) || errors.Is(err, forq.ErrInvalidQueue) {
		return &exitError{code: ExitUsage, err: err}
	}
	return err
}

// ResultCmd is "forq result".
type ResultCmd struct {
	ConnFlags `embed:""`

	ID          string        `arg:"" help:"Task ID."`
	Wait        bool          `short:"w" help:"Wait until the task has finished."`
	WaitTimeout time.Duration `default:"0" help:"With --wait: give up after this long; 0 waits forever."`
	JSON        bool          `help:"Print the result record as JSON."`
}

// Run prints the result.
func (c *ResultCmd) Run(env *Env) error {
	if err := validateID(c.ID); err != nil {
		return err
	}
	if err := validateWaitTimeout(c.WaitTimeout); err != nil {
		return err
	}
	ctx, p, done, err := c.producer("forq result", env)
	if err != nil {
		return err
	}
	defer done()
	var r *forq.Result
	if c.Wait {
		wctx, cancel := ctxWithTimeout(ctx, c.WaitTimeout)
		defer cancel()
		r, err = p.Wait(wctx, c.ID)
	} else {
		r, err = p.Result(ctx, c.ID)
	}
	if errors.Is(err, forq.ErrResultNotFound) {
		return fmt.Errorf("no result for task %s: not started yet (a task enqueued with --record is recorded when a worker starts it, unless it has a delay or a deadline: forq tasks QUEUE lists it), no such task, it did not ask for a record (enqueue with --record or --wait), or its result expired", c.ID)
	}
	if err != nil {
		return err
	}
	if c.JSON {
		b, _ := json.MarshalIndent(r, "", "  ")
		fmt.Fprintf(env.Stdout, "%s\n", b)
	} else {
		printResult(env.Stdout, r)
	}
	if r.State == forq.StateDead || r.State == forq.StateCanceled {
		return &exitError{code: ExitError}
	}
	return nil
}

func printResult(w io.Writer, r *forq.Result) {
	fmt.Fprintf(w, "id:        %s\nqueue:     %s\ntype:      %s\nstate:     %s\nattempts:  %d\n", r.ID, r.Queue, r.Type, r.State, r.Attempts)
	if r.WorkerPID != 0 {
		fmt.Fprintf(w, "worker:    pid %d on %s\n", r.WorkerPID, r.Host)
	}
	if !r.StartedAt.IsZero() {
		fmt.Fprintf(w, "started:   %s\n", r.StartedAt.Format(time.RFC3339Nano))
	}
	if !r.FinishedAt.IsZero() && !r.StartedAt.IsZero() {
		fmt.Fprintf(w, "finished:  %s (%s)\n", r.FinishedAt.Format(time.RFC3339Nano), r.FinishedAt.Sub(r.StartedAt).Round(time.Microsecond))
	}
	if r.Error != "" {
		fmt.Fprintf(w, "error:     %s\n", r.Error)
	}
	printHistory(w, r.History)
	var x forq.ExecResult
	if r.Type == forq.TypeExec && json.Unmarshal(r.Result, &x) == nil {
		fmt.Fprintf(w, "exit code: %d\n", x.ExitCode)
		if x.Signal != "" {
			fmt.Fprintf(w, "signal:    %s\n", x.Signal)
		}
		fmt.Fprintf(w, "duration:  %s\n", x.Duration.Round(time.Microsecond))
		fmt.Fprintf(w, "stdout:\n%s", indent(x.Stdout))
		if x.StderrTail != "" {
			fmt.Fprintf(w, "stderr (tail):\n%s", indent(x.StderrTail))
		}
		return
	}
	if r.Result != nil {
		fmt.Fprintf(w, "result:    %s\n", bytes.TrimRight(r.Result, "\n"))
	}
}

// printHistory prints a record's failed attempts, one a line: number,
// time, worker, error.
func printHistory(w io.Writer, h []forq.Attempt) {
	if len(h) == 0 {
		return
	}
	fmt.Fprintln(w, "failed attempts:")
	for _, a := range h {
		fmt.Fprintf(w, "  #%d  %s  pid %d on %s: %s\n", a.Attempt, a.At.Format(time.RFC3339Nano), a.PID, a.Host, a.Error)
	}
}

// execPayload turns --exec's command into the task's type and payload.
func (c *EnqueueCmd) execPayload() error {
	argv := c.Argv
	if c.Type != "" {
		argv = append([]string{c.Type}, argv...)
	}
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	if c.Payload != nil || c.File != "" {
		return usageErr("--exec takes its command after '--', not --payload or --file")
	}
	spec := forq.ExecSpec{Argv: argv, Env: c.Env, Dir: c.Dir}
	if err := spec.Validate(); err != nil {
		return usageErr("--exec: %w; put the command after '--', e.g. forq enqueue --exec --wait -- ls -l", err)
	}
	b, _ := json.Marshal(spec)
	payload := string(b)
	c.Type, c.Payload, c.Argv = forq.TypeExec, &payload, nil
	return nil
}

// printExec prints an exec task's outcome as the command would have: its
// output on stdout, its stderr tail on stderr. It returns the exit code to
// exit with, and false if r is not an exec task's result.
func printExec(env *Env, r *forq.Result) (int, bool) {
	var x forq.ExecResult
	if r.Type != forq.TypeExec || len(r.Result) == 0 || json.Unmarshal(r.Result, &x) != nil {
		return 0, false
	}
	// A write to the terminal that fails has nobody left to tell, as for
	// fmt.Fprint (see .golangci.yml).
	_, _ = io.WriteString(env.Stdout, x.Stdout)
	if x.StdoutTruncated {
		fmt.Fprintln(env.Stderr, "forq: output truncated at the worker's --exec-max-output")
	}
	if r.State != forq.StateSucceeded {
		_, _ = io.WriteString(env.Stderr, x.StderrTail)
		fmt.Fprintf(env.Stderr, "forq: task %s %s after %d attempt(s): %s\n", r.ID, r.State, r.Attempts, r.Error)
	}
	// An exit status is 0-255: a record saying otherwise (written by
	// something else than a worker) must not turn into a success.
	switch {
	case x.SignalNumber > 0 && x.SignalNumber < 128:
		return 128 + x.SignalNumber, true
	case x.ExitCode > 0 && x.ExitCode < 256:
		return x.ExitCode, true
	case r.State != forq.StateSucceeded, x.ExitCode != 0, x.SignalNumber != 0:
		return ExitError, true
	}
	return 0, true
}

// CancelCmd is "forq cancel".
type CancelCmd struct {
	ConnFlags `embed:""`

	IDs []string `arg:"" name:"id" help:"Task ID(s) to cancel."`
}

// Run cancels the tasks.
func (c *CancelCmd) Run(env *Env) error {
	// A malformed ID is refused before anything is canceled: no task can
	// have it, and "canceled a.b" would say otherwise.
	for _, id := range c.IDs {
		if err := validateID(id); err != nil {
			return err
		}
	}
	ctx, p, done, err := c.producer("forq cancel", env)
	if err != nil {
		return err
	}
	defer done()
	failed := 0
	for _, id := range c.IDs {
		if err := p.Cancel(ctx, id); err != nil {
			fmt.Fprintf(env.Stderr, "forq cancel: %v\n", err)
			failed++
			continue
		}
		fmt.Fprintf(env.Stdout, "canceled %s\n", id)
	}
	if failed > 0 {
		return &exitError{code: ExitError}
	}
	return nil
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	var b strings.Builder
	for _, l := range strings.SplitAfter(strings.TrimSuffix(s, "\n"), "\n") {
		b.WriteString("  " + l)
	}
	b.WriteString("\n")
	return b.String()
}
