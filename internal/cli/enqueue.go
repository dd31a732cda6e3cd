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
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/producer"
)

// EnqueueCmd is "forq enqueue".
type EnqueueCmd struct {
	ConnFlags     `embed:""`
	TopologyFlags `embed:""`

	Type        string        `arg:"" help:"Task type: echo and sleep are built in; your workers define others."`
	Payload     *string       `help:"Payload of the task (opaque bytes; JSON by convention)." xor:"source"`
	File        string        `short:"f" help:"Read the payload from this file, '-' for standard input." xor:"source"`
	Lines       bool          `help:"With --file: one task per non-empty line."`
	Queue       string        `short:"q" default:"default" help:"Queue to enqueue to."`
	MaxAttempts int           `default:"3" help:"How many times the task may run before it is dead-lettered."`
	Timeout     time.Duration `default:"0" help:"Bound on each attempt, e.g. 30s; 0 is none."`
	ID          string        `help:"Task ID (default: a new UUIDv7). The same ID again within the duplicate window is not enqueued twice."`
	Record      bool          `help:"Record the task's state and result, to look up with 'forq result'."`
	Wait        bool          `short:"w" help:"Wait for the result and print it; exit 1 if the task failed."`
	WaitTimeout time.Duration `default:"0" help:"With --wait: give up after this long; 0 waits forever."`
	Quiet       bool          `help:"Do not print task IDs."`
}

const bulkChunk = 5000

// Run enqueues the task(s).
func (c *EnqueueCmd) Run(env *Env) error {
	if err := forq.ValidateType(c.Type); err != nil {
		return usageErr("%v", err)
	}
	if err := forq.ValidateQueue(c.Queue); err != nil {
		return usageErr("--queue: %v", err)
	}
	if c.MaxAttempts < 1 {
		return usageErr("--max-attempts %d: must be at least 1", c.MaxAttempts)
	}
	if c.Timeout < 0 {
		return usageErr("--timeout %s: must not be negative", c.Timeout)
	}
	if c.Lines && c.File == "" {
		return usageErr("--lines needs --file (use --file - for standard input)")
	}
	if c.Lines && c.ID != "" {
		return usageErr("--id names one task; it cannot go with --lines")
	}
	payloads, err := c.payloads(env)
	if err != nil {
		return err
	}
	if v := builtins[c.Type].validate; v != nil {
		for i, p := range payloads {
			if err := v(p); err != nil {
				if c.Lines {
					return usageErr("line %d: %v; nothing was enqueued", i+1, err)
				}
				return usageErr("--payload: %v", err)
			}
		}
	}
	nc, err := c.connect("forq enqueue", env.Log)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := signalContext()
	defer stop()
	p, err := producer.New(ctx, nc, producer.Config{Replicas: c.Replicas, ResultTTL: c.ResultTTL})
	if err != nil {
		return err
	}
	opts := []producer.Option{producer.WithQueue(c.Queue), producer.WithMaxAttempts(c.MaxAttempts)}
	if c.Timeout > 0 {
		opts = append(opts, producer.WithTimeout(c.Timeout))
	}
	if c.Record || c.Wait {
		opts = append(opts, producer.WithRecord())
	}
	var ids []string
	if !c.Lines {
		info, err := p.Enqueue(ctx, forq.Task{ID: c.ID, Type: c.Type, Payload: payloads[0]}, opts...)
		if err != nil {
			return enqueueErr(err)
		}
		if !c.Quiet && !c.Wait {
			fmt.Fprintln(env.Stdout, info.ID)
		}
		if info.Duplicate {
			env.Log.Warn("a task with this ID was already enqueued; not enqueued again", "task", info.ID)
		}
		ids = append(ids, info.ID)
	} else {
		for start := 0; start < len(payloads); start += bulkChunk {
			chunk := payloads[start:min(start+bulkChunk, len(payloads))]
			tasks := make([]forq.Task, len(chunk))
			for i, pl := range chunk {
				tasks[i] = forq.Task{Type: c.Type, Payload: pl}
			}
			infos, err := p.EnqueueMany(ctx, tasks, opts...)
			for i, info := range infos {
				if info.ID != "" {
					ids = append(ids, info.ID)
					if !c.Quiet && !c.Wait {
						fmt.Fprintln(env.Stdout, info.ID)
					}
				} else if be := (*producer.BatchError)(nil); errors.As(err, &be) && be.Errs[i] != nil {
					env.Log.Error("not enqueued", "line", start+i+1, "err", be.Errs[i])
				}
			}
			if err != nil {
				return fmt.Errorf("enqueued %d of %d tasks: %w", len(ids), len(payloads), enqueueErr(err))
			}
		}
		fmt.Fprintf(env.Stderr, "enqueued %d tasks to queue %s\n", len(ids), c.Queue)
	}
	if !c.Wait {
		return nil
	}
	wctx, cancel := ctxWithTimeout(ctx, c.WaitTimeout)
	defer cancel()
	failed := 0
	for _, id := range ids {
		r, err := p.Wait(wctx, id)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("task %s: no result within --wait-timeout %s (it stays queued; see 'forq result %s')", id, c.WaitTimeout, id)
			}
			return err
		}
		if r.State != forq.StateSucceeded {
			failed++
			fmt.Fprintf(env.Stderr, "task %s %s after %d attempt(s): %s\n", r.ID, r.State, r.Attempts, r.Error)
			continue
		}
		env.Stdout.Write(r.Result)
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
	var r io.Reader = env.Stdin
	if c.File != "-" {
		f, err := os.Open(c.File)
		if err != nil {
			return nil, usageErr("--file: %v", err)
		}
		defer f.Close()
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
	if errors.Is(err, forq.ErrPayloadTooLarge) || errors.Is(err, forq.ErrInvalidTask) || errors.Is(err, forq.ErrInvalidOption) {
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
	nc, err := c.connect("forq result", env.Log)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := signalContext()
	defer stop()
	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		return err
	}
	var r *forq.Result
	if c.Wait {
		wctx, cancel := ctxWithTimeout(ctx, c.WaitTimeout)
		defer cancel()
		r, err = p.Wait(wctx, c.ID)
	} else {
		r, err = p.Result(ctx, c.ID)
	}
	if errors.Is(err, forq.ErrResultNotFound) {
		return fmt.Errorf("no result for task %s: no such task, it did not ask for a record (enqueue with --record or --wait), or its result expired", c.ID)
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
	if r.Result != nil {
		fmt.Fprintf(w, "result:    %s\n", bytes.TrimRight(r.Result, "\n"))
	}
}
