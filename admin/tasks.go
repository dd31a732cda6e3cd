package admin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/record"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TaskState is where a task that Tasks lists is, as the broker knows it.
// It is not the state of the task's record (forq.State), which the
// workers write: see TaskInfo.Record.
type TaskState string

// The states Tasks lists.
const (
	// StateQueued: in its queue, not delivered to a worker yet.
	StateQueued TaskState = "queued"
	// StateScheduled: a delayed task, held by the broker until it is due.
	StateScheduled TaskState = "scheduled"
	// StateRunning: a live worker runs it now: its status in
	// forq.BucketWorkers lists it (see the package doc).
	StateRunning TaskState = "running"
	// StateRetrying: delivered to a worker and not acknowledged, but no
	// live worker runs it: waiting for its redelivery (after a failed
	// attempt's back-off, a hand-back by a worker that stopped, a snooze,
	// a busy lock), or fetched by a worker and not started yet.
	StateRetrying TaskState = "retrying"
)

// allStates are the states Tasks lists, in its order.
var allStates = []TaskState{StateRunning, StateRetrying, StateQueued, StateScheduled}

// Defaults of Tasks.
const (
	// DefaultLimit is how many tasks Tasks returns at most.
	DefaultLimit = 100
	// DefaultPreview is how many bytes of each payload Tasks returns.
	DefaultPreview = 128
)

// TaskInfo is a task that Tasks lists.
type TaskInfo struct {
	// ID of the task: its Forq-Id header, else its Nats-Msg-Id, else
	// "seq-<Seq>" (a task published without an ID, as workers name it).
	ID    string
	Queue string
	Type  string
	// State is where the task is: queued, scheduled or running.
	State    TaskState
	Priority forq.Priority
	// Seq is the task's message's sequence in forq.StreamTasks (for a
	// scheduled task, its schedule's).
	Seq uint64
	// Enqueued is when the broker stored the message: for a delayed task
	// that came due, when it came due; for a scheduled one, when it was
	// enqueued.
	Enqueued time.Time
	// Due is when a scheduled task is due, by the broker's clock; zero for
	// the others.
	Due time.Time
	// Attempts is how many attempts the task has made so far (the one
	// running included): a running task's from its worker, the others'
	// from their record; 0 without one.
	Attempts int
	// MaxAttempts is how many times the task may run.
	MaxAttempts int
	// Deadline is when the task expires if no worker has started it; zero
	// if never.
	Deadline time.Time
	// Size is the payload's full size in bytes.
	Size int
	// Preview is the payload's first bytes, at most the limit asked for
	// (WithPreview, DefaultPreview by default); never nil.
	Preview []byte
	// Header is the task's message's headers.
	Header nats.Header
	// Record is the task's record in forq.BucketResults, nil if it has
	// none.
	Record *forq.Result
	// Worker is the live worker that runs a running task, from its
	// status; nil for the others.
	Worker *TaskWorker
}

// TaskWorker is the worker process that runs a task, as its status in
// forq.BucketWorkers names it.
type TaskWorker struct {
	Host string `json:"host"`
	PID  int    `json:"pid"`
	// Started is when the task's handler started there.
	Started time.Time `json:"started"`
	// Attempt is the attempt that runs: 1 for the first.
	Attempt int `json:"attempt"`
}

// ListOption changes what Tasks lists.
type ListOption func(*listOptions) error

type listOptions struct {
	states  []TaskState
	types   []string
	limit   int
	preview int
}

// WithState lists only tasks in the given states (by default all four:
// running, retrying, queued, scheduled). An unknown state is an error
// wrapping forq.ErrInvalidOption.
func WithState(states ...TaskState) ListOption {
	return func(o *listOptions) error {
		if len(states) == 0 {
			return fmt.Errorf("%w: no state given; use %s", forq.ErrInvalidOption, stateNames)
		}
		for _, s := range states {
			if _, err := ParseTaskState(string(s)); err != nil {
				return err
			}
		}
		o.states = states
		return nil
	}
}

// WithType lists only tasks of the given types. A name that no task can
// have is an error wrapping forq.ErrInvalidOption.
func WithType(types ...string) ListOption {
	return func(o *listOptions) error {
		if len(types) == 0 {
			return fmt.Errorf("%w: no task type given", forq.ErrInvalidOption)
		}
		for _, t := range types {
			if err := forq.ValidateType(t); err != nil {
				return fmt.Errorf("%w: %w", forq.ErrInvalidOption, err)
			}
		}
		o.types = types
		return nil
	}
}

// WithLimit returns at most n tasks (n ≥ 1; DefaultLimit by default).
func WithLimit(n int) ListOption {
	return func(o *listOptions) error {
		if n < 1 {
			return fmt.Errorf("%w: limit %d is less than 1", forq.ErrInvalidOption, n)
		}
		o.limit = n
		return nil
	}
}

// WithPreview returns the first n bytes of each payload (n ≥ 0;
// DefaultPreview by default).
func WithPreview(n int) ListOption {
	return func(o *listOptions) error {
		if n < 0 {
			return fmt.Errorf("%w: preview of %d bytes is negative", forq.ErrInvalidOption, n)
		}
		o.preview = n
		return nil
	}
}

const stateNames = "running, retrying, queued or scheduled"

// ParseTaskState parses "running", "retrying", "queued" or "scheduled".
// The error wraps forq.ErrInvalidOption.
func ParseTaskState(s string) (TaskState, error) {
	if st := TaskState(s); slices.Contains(allStates, st) {
		return st, nil
	}
	return "", fmt.Errorf("%w: task state %q: use %s", forq.ErrInvalidOption, s, stateNames)
}

// Tasks lists the tasks of queue: running ones first (each with the
// worker that runs it), then retrying ones, then queued ones (each by
// priority level, highest first, then in the order they were enqueued:
// the order workers take them), then scheduled ones (in the order they
// were enqueued), at most the limit (WithLimit) in all, of the types
// asked for (WithType; all by default). Each has a preview of its
// payload, and its record where it has one.
//
// Which delivered tasks run comes from the live workers' status in
// forq.BucketWorkers, which each rewrites every few seconds
// (consumer.Config.StatusInterval): a task that started since its
// worker's last status is listed as retrying until the next one, and a
// worker lists at most forq.MaxStatusTasks tasks.
//
// It reads the tasks one message at a time from the broker, so it costs
// a round trip per task listed (and per task of another type skipped),
// however long the queue.
//
// The error wraps forq.ErrInvalidQueue for a bad queue name,
// forq.ErrInvalidOption for a bad option, and ErrNoQueue for a queue the
// broker does not know (no consumer and no task).
func (in *Inspector) Tasks(ctx context.Context, queue string, opts ...ListOption) ([]TaskInfo, error) {
	if err := forq.ValidateQueue(queue); err != nil {
		return nil, err
	}
	o := listOptions{states: allStates, limit: DefaultLimit, preview: DefaultPreview}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("tasks of queue %s: %w", queue, err)
		}
	}
	tasks, err := in.stream(ctx, forq.StreamTasks)
	if err != nil {
		return nil, err
	}
	if tasks == nil {
		return nil, fmt.Errorf("tasks of queue %s: %w: there is no %s stream yet", queue, ErrNoQueue, forq.StreamTasks)
	}
	l := lister{in: in, tasks: tasks, queue: queue, o: o}
	known, err := l.levels(ctx)
	if err != nil {
		return nil, err
	}
	if !known {
		if known, err = l.hasTasks(ctx); err != nil {
			return nil, err
		}
		if !known {
			return nil, fmt.Errorf("tasks of queue %s: %w: it has no consumer and no task in %s", queue, ErrNoQueue, forq.StreamTasks)
		}
	}
	if slices.Contains(o.states, StateRunning) || slices.Contains(o.states, StateRetrying) {
		l.workers(ctx)
	}
	for _, st := range allStates {
		if !slices.Contains(o.states, st) {
			continue
		}
		if err := l.list(ctx, st); err != nil {
			return nil, fmt.Errorf("tasks of queue %s: %w", queue, err)
		}
	}
	l.records(ctx)
	return l.out, nil
}

// lister is one call of Tasks.
type lister struct {
	in    *Inspector
	tasks jetstream.Stream
	queue string
	o     listOptions
	// level[i] is what the consumer of priority forq.Priorities[i] has
	// delivered: the stream sequences of its ack floor and its last
	// delivery (0 and 0 without a consumer).
	level [len(forq.Priorities)]struct{ acked, delivered uint64 }
	// running are the queue's tasks that live workers run, by stream
	// sequence.
	running map[uint64]*TaskWorker
	out     []TaskInfo
}

// workers reads which of the queue's tasks the live workers run, from
// their status in forq.BucketWorkers. A status that cannot be read is
// left out: its tasks are listed as retrying.
func (l *lister) workers(ctx context.Context) {
	l.running = map[uint64]*TaskWorker{}
	kv, err := l.in.js.KeyValue(ctx, forq.BucketWorkers)
	if err != nil {
		return
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return
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
		for _, rt := range ws.Running {
			if rt.Queue == l.queue {
				l.running[rt.Seq] = &TaskWorker{Host: ws.Host, PID: ws.PID, Started: rt.Started, Attempt: rt.Attempt}
			}
		}
	}
}

// levels reads the queue's consumers; known is whether it has one.
func (l *lister) levels(ctx context.Context) (known bool, err error) {
	for i, p := range forq.Priorities {
		c, err := l.tasks.Consumer(ctx, wire.LevelConsumerName(l.queue, p))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("queue %s: consumer %s: %w", l.queue, wire.LevelConsumerName(l.queue, p), err)
		}
		ci := c.CachedInfo()
		l.level[i].acked, l.level[i].delivered = ci.AckFloor.Stream, ci.Delivered.Stream
		known = true
	}
	return known, nil
}

// hasTasks reports whether the stream holds any task or schedule of the
// queue.
func (l *lister) hasTasks(ctx context.Context) (bool, error) {
	for _, subject := range []string{wire.TaskSubject(l.queue), wire.TaskSubject(l.queue) + ".*", wire.ScheduleSubject(l.queue, "*")} {
		info, err := l.tasks.Info(ctx, jetstream.WithSubjectFilter(subject))
		if err != nil {
			return false, fmt.Errorf("queue %s: %w", l.queue, err)
		}
		if len(info.State.Subjects) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// list appends the queue's tasks in state st, up to the limit.
func (l *lister) list(ctx context.Context, st TaskState) error {
	if st == StateScheduled {
		return l.scan(ctx, wire.ScheduleSubject(l.queue, "*"), 1, 0, st)
	}
	for i, p := range forq.Priorities {
		lv := l.level[i]
		from, to := lv.delivered+1, uint64(0)
		if st == StateRunning || st == StateRetrying {
			if lv.delivered == 0 {
				continue // nothing delivered on this level
			}
			from, to = lv.acked+1, lv.delivered
		}
		if err := l.scan(ctx, wire.LevelSubject(l.queue, p), from, to, st); err != nil {
			return err
		}
	}
	return nil
}

// scan appends the messages on subject from sequence from to to (0: to
// the end) as tasks in state st, up to the limit.
func (l *lister) scan(ctx context.Context, subject string, from, to uint64, st TaskState) error {
	for seq := from; len(l.out) < l.o.limit && (to == 0 || seq <= to); {
		m, err := l.tasks.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", subject, err)
		}
		if to != 0 && m.Sequence > to {
			return nil
		}
		seq = m.Sequence + 1
		if st == StateRunning || st == StateRetrying {
			// Delivered: running if a live worker says it runs it.
			if wk := l.running[m.Sequence]; (wk != nil) != (st == StateRunning) {
				continue
			}
		}
		if len(l.o.types) > 0 && !slices.Contains(l.o.types, wire.Type(m.Header)) {
			continue
		}
		ti := taskInfo(l.queue, st, m, l.o.preview)
		if st == StateRunning {
			wk := *l.running[m.Sequence]
			ti.Worker, ti.Attempts = &wk, wk.Attempt
		}
		l.out = append(l.out, ti)
	}
	return nil
}

// taskInfo reads a task from its message m (see wire.Decode: what a
// worker would read of it).
func taskInfo(queue string, st TaskState, m *jetstream.RawStreamMsg, preview int) TaskInfo {
	h := m.Header
	d := wire.Decode(h, "")
	t := TaskInfo{
		ID:    cmp.Or(d.ID, "seq-"+strconv.FormatUint(m.Sequence, 10)),
		Queue: queue, Type: d.Type, State: st, Seq: m.Sequence, Enqueued: m.Time.UTC(),
		MaxAttempts: d.MaxAttempts, Deadline: d.Deadline, Priority: d.Priority,
		Size: len(m.Data), Header: h,
		Preview: append([]byte{}, m.Data[:min(preview, len(m.Data))]...),
	}
	if h == nil {
		t.Header = nats.Header{}
	}
	if _, p, ok := wire.ParseTaskSubject(m.Subject); ok {
		t.Priority = p // the subject decides the level
	}
	if st == StateScheduled {
		if _, p, ok := wire.ParseTaskSubject(h.Get(jetstream.ScheduleTargetHeader)); ok {
			t.Priority = p
		}
		if at, ok := strings.CutPrefix(h.Get(jetstream.ScheduleHeader), "@at "); ok {
			t.Due, _ = time.Parse(time.RFC3339Nano, at)
		}
		if d.ID == "" {
			_, t.ID, _ = strings.Cut(strings.TrimPrefix(m.Subject, forq.SubjectSchedulePrefix), ".")
		}
	}
	return t
}

// records joins the listed tasks with their records, where they have one.
// A record that cannot be read is left out: the listing is what the
// broker holds; the record adds to it.
func (l *lister) records(ctx context.Context) {
	if len(l.out) == 0 {
		return
	}
	kv, err := l.in.js.KeyValue(ctx, forq.BucketResults)
	if err != nil {
		return
	}
	records := record.New(kv)
	for i := range l.out {
		t := &l.out[i]
		if forq.ValidateID(t.ID) != nil {
			continue // not a key the bucket can hold
		}
		r, _, err := records.Get(ctx, t.ID)
		if err != nil || r == nil {
			continue
		}
		t.Record = r
		// Counts of an earlier message of the task (one retried from the
		// dead letters is a new message) are not this one's.
		// A running task's attempt is its worker's.
		if t.Worker == nil && (r.Seq == 0 || r.Seq == t.Seq) {
			t.Attempts = r.Attempts
		}
	}
}
