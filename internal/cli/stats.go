package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/forqhq/forq"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/term"
)

// StatsCmd is "forq stats".
type StatsCmd struct {
	ConnFlags `embed:""`

	Queue    []string      `short:"q" help:"Only these queues (default: every queue that has a consumer)."`
	JSON     bool          `help:"Print one JSON object, for scripts."`
	Watch    bool          `short:"w" help:"Redraw every --interval until Ctrl-C."`
	Interval time.Duration `default:"1s" help:"With --watch: time between redraws."`
}

// QueueStats is one queue's line in "forq stats".
type QueueStats struct {
	Queue  string `json:"queue"`
	Queued uint64 `json:"queued"`
	// QueuedByPriority splits Queued by level: "high", "normal", "low".
	QueuedByPriority map[string]uint64 `json:"queued_by_priority"`
	// Scheduled are delayed tasks not due yet.
	Scheduled       uint64 `json:"scheduled"`
	Running         int    `json:"running"`
	Dead            uint64 `json:"dead"`
	Paused          bool   `json:"paused"`
	Processed1m     int64  `json:"processed_last_minute"`
	Failed1m        int64  `json:"failed_last_minute"`
	Redelivered     int    `json:"redelivered"`
	WaitingRequests int    `json:"waiting_pulls"`
}

// WorkerStats is one worker's line in "forq stats".
type WorkerStats struct {
	PID      int       `json:"pid"`
	Host     string    `json:"host"`
	Queues   []string  `json:"queues"`
	InFlight int64     `json:"in_flight"`
	Since    time.Time `json:"since"`
	Tasks    int64     `json:"processed"`
}

// Stats is the whole of "forq stats --json".
type Stats struct {
	Time    time.Time     `json:"time"`
	Queues  []QueueStats  `json:"queues"`
	Workers []WorkerStats `json:"workers"`
}

// Run prints the stats once, or redraws them with --watch.
func (c *StatsCmd) Run(env *Env) error {
	if err := validateQueues(c.Queue); err != nil {
		return err
	}
	if c.Interval <= 0 {
		return usageErr("--interval %s: must be positive", c.Interval)
	}
	nc, err := c.connect("forq stats", env.Log)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := signalContext()
	defer stop()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	tty := false
	if f, ok := env.Stdout.(interface{ Fd() uintptr }); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	for {
		st, err := collectStats(ctx, js, c.Queue)
		if err != nil {
			if c.Watch && ctx.Err() != nil {
				return nil
			}
			return err
		}
		if c.Watch && tty && !c.JSON {
			io.WriteString(env.Stdout, "\x1b[H\x1b[2J") // home, clear
		}
		if c.JSON {
			b, _ := json.Marshal(st)
			fmt.Fprintf(env.Stdout, "%s\n", b)
		} else {
			printStats(env.Stdout, st)
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

// collectStats reads the queues from the broker and the workers from
// forq.BucketWorkers.
func collectStats(ctx context.Context, js jetstream.JetStream, only []string) (*Stats, error) {
	st := &Stats{Time: time.Now().UTC(), Queues: []QueueStats{}, Workers: []WorkerStats{}}
	tasks, err := js.Stream(ctx, forq.StreamTasks)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return st, nil // nothing was ever enqueued or worked on
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", forq.StreamTasks, err)
	}
	byQueue := map[string]*QueueStats{}
	lister := tasks.ListConsumers(ctx)
	for ci := range lister.Info() {
		// A queue's line sums its priority levels' consumers; it is
		// paused as its own (normal) consumer is.
		q, prio := forq.ParseConsumerName(ci.Name)
		if len(only) > 0 && !slices.Contains(only, q) {
			continue
		}
		qs := byQueue[q]
		if qs == nil {
			qs = newQueueStats(q)
			byQueue[q] = qs
		}
		qs.Queued += ci.NumPending
		qs.QueuedByPriority[prio.String()] += ci.NumPending
		qs.Running += ci.NumAckPending
		qs.Redelivered += ci.NumRedelivered
		qs.WaitingRequests += ci.NumWaiting
		if prio == forq.PriorityNormal {
			qs.Paused = ci.Paused
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("list the queues: %w", err)
	}
	for _, q := range only {
		if byQueue[q] == nil {
			byQueue[q] = newQueueStats(q)
		}
	}
	// Delayed tasks wait on forq.schedule.<queue>.<id> until they are due.
	if info, err := tasks.Info(ctx, jetstream.WithSubjectFilter(forq.SubjectSchedulePrefix+">")); err == nil {
		for subj, n := range info.State.Subjects {
			q, _, _ := strings.Cut(strings.TrimPrefix(subj, forq.SubjectSchedulePrefix), ".")
			if qs := byQueue[q]; qs != nil {
				qs.Scheduled += n
			} else if len(only) == 0 {
				qs = newQueueStats(q)
				qs.Scheduled = n
				byQueue[q] = qs
			}
		}
	}
	if dead, err := js.Stream(ctx, forq.StreamDead); err == nil {
		if info, err := dead.Info(ctx, jetstream.WithSubjectFilter(forq.SubjectDeadPrefix+">")); err == nil {
			for subj, n := range info.State.Subjects {
				q := strings.TrimPrefix(subj, forq.SubjectDeadPrefix)
				if qs := byQueue[q]; qs != nil {
					qs.Dead = n
				} else if len(only) == 0 {
					qs = newQueueStats(q)
					qs.Dead = n
					byQueue[q] = qs
				}
			}
		}
	}
	if kv, err := js.KeyValue(ctx, forq.BucketWorkers); err == nil {
		keys, err := kv.ListKeys(ctx)
		if err == nil {
			for k := range keys.Keys() {
				e, err := kv.Get(ctx, k)
				if err != nil {
					continue
				}
				var ws forq.WorkerStatus
				if json.Unmarshal(e.Value(), &ws) != nil {
					continue
				}
				mine := len(only) == 0
				for q, c := range ws.LastMinute {
					if qs := byQueue[q]; qs != nil {
						qs.Processed1m += c.Processed
						qs.Failed1m += c.Failed
						mine = true
					}
				}
				if mine {
					st.Workers = append(st.Workers, WorkerStats{PID: ws.PID, Host: ws.Host, Queues: ws.Queues, InFlight: ws.InFlight, Since: ws.Started, Tasks: ws.Processed})
				}
			}
		}
	}
	for _, qs := range byQueue {
		st.Queues = append(st.Queues, *qs)
	}
	slices.SortFunc(st.Queues, func(a, b QueueStats) int { return strings.Compare(a.Queue, b.Queue) })
	slices.SortFunc(st.Workers, func(a, b WorkerStats) int {
		if c := strings.Compare(a.Host, b.Host); c != 0 {
			return c
		}
		return a.PID - b.PID
	})
	return st, nil
}

func printStats(w io.Writer, st *Stats) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tQUEUED (high/normal/low)\tRUNNING\tSCHEDULED\tDEAD\tPAUSED\tDONE/1m\tFAILED/1m")
	for _, q := range st.Queues {
		paused := "no"
		if q.Paused {
			paused = "yes"
		}
		by := q.QueuedByPriority
		fmt.Fprintf(tw, "%s\t%d (%d/%d/%d)\t%d\t%d\t%d\t%s\t%d\t%d\n", q.Queue, q.Queued, by["high"], by["normal"], by["low"], q.Running, q.Scheduled, q.Dead, paused, q.Processed1m, q.Failed1m)
	}
	if len(st.Queues) == 0 {
		fmt.Fprintln(tw, "(no queues yet)")
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "WORKER PID\tHOST\tQUEUES\tIN FLIGHT\tDONE\tSINCE")
	for _, wk := range st.Workers {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\n", wk.PID, wk.Host, strings.Join(wk.Queues, ","), wk.InFlight, wk.Tasks, wk.Since.Local().Format(time.DateTime))
	}
	if len(st.Workers) == 0 {
		fmt.Fprintln(tw, "(no workers)")
	}
	tw.Flush()
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
		defer resp.Body.Close()
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
	info, err := js.AccountInfo(ctx)
	if err != nil {
		return &exitError{code: ExitError, err: fmt.Errorf("unhealthy: broker at %s: JetStream: %w", nc.ConnectedUrl(), err)}
	}
	fmt.Fprintf(env.Stdout, "healthy: broker at %s, JetStream up with %d streams\n", nc.ConnectedUrl(), info.Streams)
	return nil
}

func newQueueStats(q string) *QueueStats {
	return &QueueStats{Queue: q, QueuedByPriority: map[string]uint64{"high": 0, "normal": 0, "low": 0}}
}
