package admin

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// QueueStats is one queue's figures, as "forq stats" shows them.
type QueueStats struct {
	Queue string `json:"queue"`
	// Queued are the tasks waiting for a worker: not delivered yet
	// (JetStream's pending count of the level's consumer; for a level
	// that has no consumer yet, every task on its subject), summed over
	// the priority levels.
	Queued uint64 `json:"queued"`
	// QueuedByPriority splits Queued by level: "high", "normal", "low".
	QueuedByPriority map[string]uint64 `json:"queued_by_priority"`
	// Scheduled are delayed tasks not due yet.
	Scheduled uint64 `json:"scheduled"`
	// Running are the tasks whose handlers a live worker runs now: the
	// sum of the counts the queue's workers publish in their status
	// (forq.WorkerStatus.RunningByQueue, at most a status interval old),
	// and never more than Unacked (a worker killed without a word keeps
	// its status until it expires, while the broker already offers its
	// tasks again).
	Running int `json:"running"`
	// Unacked are the tasks delivered to a worker and not acknowledged
	// yet (JetStream's ack pending): Running, and Retrying.
	Unacked int `json:"unacked"`
	// Retrying are Unacked but not Running: tasks waiting for their
	// redelivery (after a failed attempt's back-off, a hand-back by a
	// worker that stopped, a snooze, a busy lock), or fetched by a worker
	// and not started yet.
	Retrying int `json:"retrying"`
	// Dead are the queue's letters in forq.StreamDead.
	Dead uint64 `json:"dead"`
	// Paused is whether the queue's (normal level) consumer is paused.
	Paused bool `json:"paused"`
	// RecordAll is whether every task of the queue is recorded (see
	// SetRecordAll).
	RecordAll bool `json:"record_all"`
	// Processed1m and Failed1m are the tasks that the queue's live
	// workers ran to success, and the attempts that failed (retried or
	// dead-lettered), in the last minute, from their status in
	// forq.BucketWorkers: as forq_tasks_processed_total and
	// forq_tasks_failed_total count them.
	Processed1m int64 `json:"processed_last_minute"`
	Failed1m    int64 `json:"failed_last_minute"`
	// Redelivered are the tasks delivered more than once and not yet
	// acknowledged.
	Redelivered int `json:"redelivered"`
	// WaitingRequests are the workers' pull requests waiting for tasks.
	WaitingRequests int `json:"waiting_pulls"`
}

// WorkerStats is one live worker process, from its status in
// forq.BucketWorkers.
type WorkerStats struct {
	PID      int       `json:"pid"`
	Host     string    `json:"host"`
	Queues   []string  `json:"queues"`
	InFlight int64     `json:"in_flight"`
	Since    time.Time `json:"since"`
	// Tasks counts every delivery the worker took, whatever its outcome.
	Tasks int64 `json:"processed"`
	// Succeeded counts the tasks that succeeded on the worker.
	Succeeded int64 `json:"succeeded"`
	// Running lists the tasks it runs now (at most
	// forq.MaxStatusTasks).
	Running []forq.RunningTask `json:"running"`
	// Restarts is how many times the worker's pool restarted its slot
	// after a crash before it (forq.WorkerStatus.Restarts).
	Restarts int `json:"restarts"`
}

// Stats are the figures of the queues and the live workers at Time, as
// "forq stats --json" prints them.
type Stats struct {
	Time time.Time `json:"time"`
	// Queues, sorted by name.
	Queues []QueueStats `json:"queues"`
	// Workers, sorted by host and PID.
	Workers []WorkerStats `json:"workers"`
}

// Stats returns the figures of the given queues, or of every queue the
// broker knows (one that has a consumer, tasks, delayed tasks or dead
// letters) when none is given. A queue named that the broker does not know gets a
// line of zeros. With queues named, only the workers that serve one of
// them are listed. A bad queue name is an error wrapping
// forq.ErrInvalidQueue.
func (in *Inspector) Stats(ctx context.Context, queues ...string) (*Stats, error) {
	for _, q := range queues {
		if err := forq.ValidateQueue(q); err != nil {
			return nil, err
		}
	}
	st := &Stats{Time: time.Now().UTC(), Queues: []QueueStats{}, Workers: []WorkerStats{}}
	tasks, err := in.stream(ctx, forq.StreamTasks)
	if err != nil {
		return nil, err
	}
	if tasks == nil {
		return st, nil // nothing was ever enqueued or worked on
	}
	c := statsCollector{only: queues, byQueue: map[string]*QueueStats{}}
	if err := c.consumers(ctx, tasks); err != nil {
		return nil, err
	}
	for _, q := range queues {
		c.queue(q, true)
	}
	if err := c.subjects(ctx, tasks); err != nil {
		return nil, err
	}
	// Delayed tasks wait on forq.schedule.<queue>.<id> until they are due.
	if info, err := tasks.Info(ctx, jetstream.WithSubjectFilter(forq.SubjectSchedulePrefix+">")); err == nil {
		for subj, n := range info.State.Subjects {
			q, _, _ := strings.Cut(strings.TrimPrefix(subj, forq.SubjectSchedulePrefix), ".")
			if qs := c.queue(q, false); qs != nil {
				qs.Scheduled += n
			}
		}
	}
	if dead, err := in.stream(ctx, forq.StreamDead); err == nil && dead != nil {
		if info, err := dead.Info(ctx, jetstream.WithSubjectFilter(forq.SubjectDeadPrefix+">")); err == nil {
			for subj, n := range info.State.Subjects {
				if qs := c.queue(strings.TrimPrefix(subj, forq.SubjectDeadPrefix), false); qs != nil {
					qs.Dead = n
				}
			}
		}
	}
	st.Workers = c.workers(ctx, in.js)
	for _, qs := range c.byQueue {
		qs.Running = min(c.running[qs.Queue], qs.Unacked)
		qs.Retrying = qs.Unacked - qs.Running
		st.Queues = append(st.Queues, *qs)
	}
	slices.SortFunc(st.Queues, func(a, b QueueStats) int { return strings.Compare(a.Queue, b.Queue) })
	slices.SortFunc(st.Workers, func(a, b WorkerStats) int {
		return cmp.Or(strings.Compare(a.Host, b.Host), cmp.Compare(a.PID, b.PID))
	})
	return st, nil
}

// statsCollector gathers Stats' queue lines.
type statsCollector struct {
	only    []string // the queues asked for; nil for all
	byQueue map[string]*QueueStats
	// levels are the task subjects that have a consumer.
	levels map[string]bool
	// running sums the live workers' running tasks per queue.
	running map[string]int
}

// queue returns q's line, making it if q is one asked for (or all are) or
// if add is true; nil if q is not asked for.
func (c *statsCollector) queue(q string, add bool) *QueueStats {
	if qs := c.byQueue[q]; qs != nil {
		return qs
	}
	if !add && len(c.only) > 0 && !slices.Contains(c.only, q) {
		return nil
	}
	qs := &QueueStats{Queue: q, QueuedByPriority: map[string]uint64{"high": 0, "normal": 0, "low": 0}}
	c.byQueue[q] = qs
	return qs
}

// consumers adds the figures of the queues' consumers: a queue's line sums
// its priority levels' consumers; it is paused as its own (normal) one is.
func (c *statsCollector) consumers(ctx context.Context, tasks jetstream.Stream) error {
	lister := tasks.ListConsumers(ctx)
	for ci := range lister.Info() {
		q, prio := wire.ParseConsumerName(ci.Name)
		if c.levels == nil {
			c.levels = map[string]bool{}
		}
		c.levels[wire.LevelSubject(q, prio)] = true
		qs := c.queue(q, false)
		if qs == nil {
			continue
		}
		qs.Queued += ci.NumPending
		qs.QueuedByPriority[prio.String()] += ci.NumPending
		qs.Unacked += ci.NumAckPending
		qs.Redelivered += ci.NumRedelivered
		qs.WaitingRequests += ci.NumWaiting
		if prio == forq.PriorityNormal {
			qs.Paused = ci.Paused
			qs.RecordAll = ci.Config.Metadata[forq.MetadataRecord] == "1"
		}
	}
	if err := lister.Err(); err != nil {
		return fmt.Errorf("list the queues: %w", err)
	}
	return nil
}

// subjects adds the tasks of the priority levels that have no consumer
// yet (tasks published before any worker or pause declared it): all the
// tasks on the level's subject are queued.
func (c *statsCollector) subjects(ctx context.Context, tasks jetstream.Stream) error {
	info, err := tasks.Info(ctx, jetstream.WithSubjectFilter(forq.SubjectTasksPrefix+">"))
	if err != nil {
		return fmt.Errorf("count the queues' tasks: %w", err)
	}
	for subj, n := range info.State.Subjects {
		q, prio, ok := wire.ParseTaskSubject(subj)
		if !ok || c.levels[subj] {
			continue
		}
		if qs := c.queue(q, false); qs != nil {
			qs.Queued += n
			qs.QueuedByPriority[prio.String()] += n
		}
	}
	return nil
}

// workers reads the live workers from forq.BucketWorkers and adds what
// they did in the last minute to the queues' lines. A worker whose status
// cannot be read is left out: it is a report, not a check.
func (c *statsCollector) workers(ctx context.Context, js jetstream.JetStream) []WorkerStats {
	out := []WorkerStats{}
	kv, err := js.KeyValue(ctx, forq.BucketWorkers)
	if err != nil {
		return out
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return out
	}
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var ws forq.WorkerStatus
		if json.Unmarshal(e.Value(), &ws) != nil {
			continue
		}
		mine := len(c.only) == 0
		for q, n := range ws.RunningByQueue {
			if c.byQueue[q] != nil {
				if c.running == nil {
					c.running = map[string]int{}
				}
				c.running[q] += n
			}
		}
		for q, n := range ws.LastMinute {
			if qs := c.byQueue[q]; qs != nil {
				qs.Processed1m += n.Processed
				qs.Failed1m += n.Failed
				mine = true
			}
		}
		if mine {
			running := ws.Running
			if running == nil {
				running = []forq.RunningTask{}
			}
			out = append(out, WorkerStats{PID: ws.PID, Host: ws.Host, Queues: ws.Queues, InFlight: ws.InFlight, Since: ws.Started,
				Tasks: ws.Processed, Succeeded: ws.Succeeded, Running: running, Restarts: ws.Restarts})
		}
	}
	return out
}
