package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/term"
)

// StatsCmd is "forq stats".
type StatsCmd struct {
	ConnFlags `embed:""`

	Queue    []string      `short:"q" help:"Only these queues (default: every queue that has a consumer, tasks, delayed tasks or dead letters)."`
	JSON     bool          `help:"Print one JSON object, for scripts."`
	Watch    bool          `short:"w" help:"Redraw every --interval until Ctrl-C."`
	Interval time.Duration `default:"1s" help:"With --watch: time between redraws."`
}

// Help explains the columns.
func (c *StatsCmd) Help() string {
	return `Queues: QUEUED are tasks not delivered to a worker yet (per priority
level); RUNNING are tasks whose handlers a live worker runs now (from the
workers' status, at most 2s old); RETRYING are tasks delivered and not
acknowledged that no worker runs: waiting for their redelivery after a
failed attempt's back-off, a hand-back by a worker that stopped, a snooze
or a busy lock (or fetched and about to start); SCHEDULED are delayed
tasks not due yet; DEAD are dead letters. DONE/1m are the tasks that
succeeded in the last minute and FAILED/1m the attempts that failed
(retried or dead-lettered), as forq_tasks_processed_total and
forq_tasks_failed_total count them.

Workers: IN FLIGHT are the tasks a worker holds now, DONE the tasks that
succeeded on it since it started.`
}

// Run prints the stats once, or redraws them with --watch.
func (c *StatsCmd) Run(env *Env) error {
	if err := validateQueues(c.Queue); err != nil {
		return err
	}
	if c.Interval <= 0 {
		return usageErr("--interval %s: must be positive", c.Interval)
	}
	queues := make([]string, len(c.Queue))
	for i, q := range c.Queue {
		queues[i] = strings.TrimSpace(q)
	}
	ctx, in, done, err := c.inspector("forq stats", env, admin.Config{})
	if err != nil {
		return err
	}
	defer done()
	tty := false
	if f, ok := env.Stdout.(interface{ Fd() uintptr }); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	for {
		st, err := in.Stats(ctx, queues...)
		if err != nil {
			if c.Watch && ctx.Err() != nil {
				return nil
			}
			return err
		}
		if c.Watch && tty && !c.JSON {
			_, _ = io.WriteString(env.Stdout, "\x1b[H\x1b[2J") // home, clear; a terminal write, as fmt.Fprint's
		}
		if c.JSON {
			b, _ := json.Marshal(st)
			fmt.Fprintf(env.Stdout, "%s\n", b)
		} else {
			if err := printStats(env.Stdout, st); err != nil {
				return err
			}
		}
		if !c.Watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.Interval):
		}
	}
}

// printStats prints st as the table of "forq stats".
func printStats(w io.Writer, st *admin.Stats) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tQUEUED (high/normal/low)\tRUNNING\tRETRYING\tSCHEDULED\tDEAD\tPAUSED\tDONE/1m\tFAILED/1m")
	for _, q := range st.Queues {
		paused := "no"
		if q.Paused {
			paused = "yes"
		}
		by := q.QueuedByPriority
		fmt.Fprintf(tw, "%s\t%d (%d/%d/%d)\t%d\t%d\t%d\t%d\t%s\t%d\t%d\n", q.Queue, q.Queued, by["high"], by["normal"], by["low"],
			q.Running, q.Retrying, q.Scheduled, q.Dead, paused, q.Processed1m, q.Failed1m)
	}
	if len(st.Queues) == 0 {
		fmt.Fprintln(tw, "(no queues yet)")
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "WORKER PID\tHOST\tQUEUES\tIN FLIGHT\tDONE\tSINCE")
	for _, wk := range st.Workers {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\n", wk.PID, wk.Host, strings.Join(wk.Queues, ","), wk.InFlight, wk.Succeeded, wk.Since.Local().Format(time.DateTime))
	}
	if len(st.Workers) == 0 {
		fmt.Fprintln(tw, "(no workers)")
	}
	return tw.Flush()
}

// HealthCmd is "forq health": a health check for scripts and
// docker-compose.
type HealthCmd struct {
	ConnFlags `embed:""`

	HTTP string `placeholder:"URL" help:"Check this /healthz or /readyz endpoint of a forq process instead of the broker."`
}

// Run checks the broker (or an endpoint) and exits 0 if it is healthy.
func (c *HealthCmd) Run(env *Env) error {
	if c.HTTP != "" {
		client := &http.Client{Timeout: c.ConnectTimeout}
		resp, err := client.Get(c.HTTP)
		if err != nil {
			return &exitError{code: ExitError, err: fmt.Errorf("unhealthy: %w", err)}
		}
		defer func() { _ = resp.Body.Close() }() // a response read to its end: nothing to report
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != http.StatusOK {
			return &exitError{code: ExitError, err: fmt.Errorf("unhealthy: %s: %s %s", c.HTTP, resp.Status, strings.TrimSpace(string(body)))}
		}
		fmt.Fprintf(env.Stdout, "healthy: %s: %s\n", c.HTTP, strings.TrimSpace(string(body)))
		return nil
	}
	nc, err := c.connect("forq health", env.Log)
	if err != nil {
		return &exitError{code: ExitError, err: fmt.Errorf("unhealthy: %w", errors.Unwrap(err))}
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.ConnectTimeout)
	defer cancel()
	// A forq broker says whether it can store tasks (a full disk, or
	// JetStream's storage limit reached); a plain nats-server does not.
	if h, err := topology.AskHealth(ctx, nc); err == nil && !h.Healthy {
		return &exitError{code: ExitError, err: fmt.Errorf("unhealthy: broker at %s: %w", nc.ConnectedUrl(), h.Err())}
	}
	info, err := js.AccountInfo(ctx)
	if err != nil {
		return &exitError{code: ExitError, err: fmt.Errorf("unhealthy: broker at %s: JetStream: %w", nc.ConnectedUrl(), err)}
	}
	fmt.Fprintf(env.Stdout, "healthy: broker at %s, JetStream up with %d streams\n", nc.ConnectedUrl(), info.Streams)
	return nil
}
