package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"golang.org/x/term"
)

// DeadCmd is "forq dead".
type DeadCmd struct {
	Ls    DeadLsCmd    `cmd:"" help:"List dead letters: tasks that used up their attempts, oldest first."`
	Show  DeadShowCmd  `cmd:"" help:"Show dead letters whole: headers, last error and payload."`
	Retry DeadRetryCmd `cmd:"" help:"Put dead tasks back on their queue with the same ID and payload, attempts reset."`
	Purge DeadPurgeCmd `cmd:"" help:"Delete dead letters for good."`
}

// deadSelection is how retry and purge pick dead letters.
type deadSelection struct {
	Refs []string `arg:"" optional:"" name:"id" help:"Task IDs or dead-letter sequence numbers (SEQ in 'forq dead ls')."`
	// No environment variables: a FORQ_QUEUE or FORQ_ALL set for other
	// commands must not select what a retry or a purge acts on.
	Queue string `short:"q" env:"-" help:"Every dead letter of this queue (with IDs: only among them). No environment variable."`
	All   bool   `env:"-" help:"Every dead letter of every queue. No environment variable."`
}

func (s *deadSelection) validate() error {
	switch {
	case s.All && (len(s.Refs) > 0 || s.Queue != ""):
		return usageErr("--all goes alone, without IDs or --queue")
	case !s.All && len(s.Refs) == 0 && s.Queue == "":
		return usageErr("say which dead letters: task IDs or sequence numbers, --queue QUEUE, or --all")
	}
	if s.Queue != "" {
		if err := forq.ValidateQueue(s.Queue); err != nil {
			return usageErr("--queue: %v", err)
		}
	}
	return nil
}

func (s *deadSelection) find(ctx context.Context, in *admin.Inspector) ([]admin.DeadLetter, error) {
	if len(s.Refs) > 0 {
		ds, err := in.FindDeadLetters(ctx, s.Queue, s.Refs)
		if errors.Is(err, admin.ErrDeadLetterNotFound) {
			return nil, &exitError{code: ExitError, err: fmt.Errorf("%v; nothing was done (see 'forq dead ls')", err)}
		}
		return ds, err
	}
	return in.DeadLetters(ctx, s.Queue)
}

// DeadLsCmd is "forq dead ls".
type DeadLsCmd struct {
	ConnFlags `embed:""`

	Queue string `short:"q" help:"Only this queue's dead letters."`
	JSON  bool   `help:"Print a JSON array of the dead letters, headers and payloads included."`
}

// Run lists the dead letters.
func (c *DeadLsCmd) Run(env *Env) error {
	if c.Queue != "" {
		if err := forq.ValidateQueue(c.Queue); err != nil {
			return usageErr("--queue: %v", err)
		}
	}
	ctx, in, done, err := c.inspector("forq dead ls", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	ds, err := in.DeadLetters(ctx, c.Queue)
	if err != nil {
		return err
	}
	if c.JSON {
		b, _ := json.Marshal(ds)
		fmt.Fprintf(env.Stdout, "%s\n", b)
		return nil
	}
	if len(ds) == 0 {
		fmt.Fprintln(env.Stdout, "no dead letters")
		return nil
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tID\tQUEUE\tTYPE\tATTEMPTS\tDIED\tERROR")
	for _, d := range ds {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", d.Seq, d.ID, d.Queue, d.Type, d.Attempts, d.Time.Local().Format(time.DateTime), shorten(d.Error, 60))
	}
	return tw.Flush()
}

// shorten keeps s on one line of at most n runes.
func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// DeadShowCmd is "forq dead show".
type DeadShowCmd struct {
	ConnFlags `embed:""`

	Refs []string `arg:"" name:"id" help:"Task IDs or dead-letter sequence numbers."`
	JSON bool     `help:"Print each as a JSON object (payload in base64)."`
}

// Run shows the dead letters.
func (c *DeadShowCmd) Run(env *Env) error {
	ctx, in, done, err := c.inspector("forq dead show", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	ds, err := in.FindDeadLetters(ctx, "", c.Refs)
	for i, d := range ds {
		if c.JSON {
			b, _ := json.Marshal(d)
			fmt.Fprintf(env.Stdout, "%s\n", b)
			continue
		}
		if i > 0 {
			fmt.Fprintln(env.Stdout)
		}
		printDeadLetter(env.Stdout, d)
	}
	if errors.Is(err, admin.ErrDeadLetterNotFound) {
		return &exitError{code: ExitError, err: fmt.Errorf("%v (see 'forq dead ls')", err)}
	}
	return err
}

func printDeadLetter(w io.Writer, d admin.DeadLetter) {
	fmt.Fprintf(w, "seq:       %d\nid:        %s\nqueue:     %s\ntype:      %s\nattempts:  %d\ndied:      %s\nerror:     %s\nheaders:\n",
		d.Seq, d.ID, d.Queue, d.Type, d.Attempts, d.Time.Format(time.RFC3339Nano), d.Error)
	keys := make([]string, 0, len(d.Header))
	for k := range d.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range d.Header[k] {
			fmt.Fprintf(w, "  %s: %s\n", k, v)
		}
	}
	switch {
	case len(d.Payload) == 0:
		fmt.Fprintln(w, "payload:   (empty)")
	case utf8.Valid(d.Payload):
		fmt.Fprintf(w, "payload (%d bytes):\n%s", len(d.Payload), indent(string(d.Payload)))
	default:
		fmt.Fprintf(w, "payload:   %d bytes, not UTF-8 (--json shows them in base64)\n", len(d.Payload))
	}
}

// DeadRetryCmd is "forq dead retry".
type DeadRetryCmd struct {
	ConnFlags     `embed:""`
	deadSelection `embed:""`
}

// Help explains what a retry does.
func (c *DeadRetryCmd) Help() string {
	return `Each task goes back to forq.tasks.<queue> with its ID, type, payload and
Forq-* headers (less its deadline, if it had one), as a new message: its
attempts start again from 1. Its dead letter is deleted only once the broker
has stored the task again; a recorded result goes back to queued.

The broker remembers a task ID for the duplicate window (2 minutes by
default) and drops a second enqueue of it meanwhile, even after the task
left the queue. So a task that died less than that ago is retried once its
window has passed: the command waits (Ctrl-C stops it; what was retried is
retried, the rest stay dead).`
}

// Run retries the dead letters.
func (c *DeadRetryCmd) Run(env *Env) error {
	if err := c.validate(); err != nil {
		return err
	}
	ctx, in, done, err := c.inspector("forq dead retry", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	ds, err := c.find(ctx, in)
	if err != nil {
		return err
	}
	if len(ds) == 0 {
		fmt.Fprintln(env.Stdout, "no dead letters to retry")
		return nil
	}
	// Oldest first, in the order they died.
	slices.SortFunc(ds, func(a, b admin.DeadLetter) int { return a.Time.Compare(b.Time) })
	n := 0
	for _, d := range ds {
		info, err := in.RetryDead(ctx, d)
		if err != nil {
			return fmt.Errorf("%w (%d of %d retried)", err, n, len(ds))
		}
		n++
		if info.AlreadyQueued {
			fmt.Fprintf(env.Stdout, "retried %s (queue %s, type %s): it was back in its queue already; dead letter %d deleted\n", d.ID, d.Queue, d.Type, d.Seq)
		} else {
			fmt.Fprintf(env.Stdout, "retried %s (queue %s, type %s)\n", d.ID, d.Queue, d.Type)
		}
	}
	fmt.Fprintf(env.Stdout, "%d dead letter(s) retried\n", n)
	return nil
}

// DeadPurgeCmd is "forq dead purge".
type DeadPurgeCmd struct {
	ConnFlags     `embed:""`
	deadSelection `embed:""`

	Yes bool `short:"y" env:"-" help:"Do not ask for confirmation on a terminal. No environment variable."`
}

// Run purges the dead letters.
func (c *DeadPurgeCmd) Run(env *Env) error {
	if err := c.validate(); err != nil {
		return err
	}
	ctx, in, done, err := c.inspector("forq dead purge", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	ds, err := c.find(ctx, in)
	if err != nil {
		return err
	}
	if len(ds) == 0 {
		fmt.Fprintln(env.Stdout, "no dead letters to purge")
		return nil
	}
	if !c.Yes {
		if in, ok := env.Stdin.(interface{ Fd() uintptr }); ok && term.IsTerminal(int(in.Fd())) {
			fmt.Fprintf(env.Stderr, "Delete %d dead letter(s) for good? [y/N] ", len(ds)) // a question, not a result: stderr, as the banners
			line, _ := bufio.NewReader(env.Stdin).ReadString('\n')
			if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
				return &exitError{code: ExitError, err: errors.New("nothing purged")}
			}
		}
	}
	n, err := in.PurgeDead(ctx, ds)
	if err != nil {
		return fmt.Errorf("%w (%d purged)", err, n)
	}
	fmt.Fprintf(env.Stdout, "purged %d dead letter(s)\n", n)
	return nil
}
