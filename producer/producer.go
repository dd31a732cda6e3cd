// Package producer enqueues forq tasks and waits for their results.
//
// An Enqueue that returned nil is durable: the broker's stream has stored
// the task (on a cluster, on a quorum of replicas). Enqueueing a task ID
// again inside the stream's duplicate window is a no-op that reports the
// first enqueue's sequence with Info.Duplicate set.
package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultWindow is how many asynchronous publishes EnqueueMany keeps in
// flight at once.
const DefaultWindow = 4096

// Config configures a Producer. The zero value is ready to use.
type Config struct {
	// Window bounds the publishes EnqueueMany has in flight; 0 means
	// DefaultWindow.
	Window int
	// Replicas, ResultTTL and DuplicateWindow apply when this producer is
	// the first process to declare forq's streams and bucket; see
	// topology. 0 means the defaults (1, forq.DefaultResultTTL,
	// forq.DefaultDuplicateWindow).
	Replicas        int
	ResultTTL       time.Duration
	DuplicateWindow time.Duration
	// Clock is the producer's clock; nil means time.Now. Delays are kept
	// by the broker's clock whatever it says (tests skew it to show that).
	Clock func() time.Time
	// UniqueTTL bounds how long a unique key stays claimed if no worker
	// releases it; 0 means forq.DefaultUniqueTTL. See WithUnique.
	UniqueTTL time.Duration
	// AckTimeout is how long EnqueueMany waits when no acknowledgement
	// comes at all before it reports the tasks still waiting with
	// ErrNoAck; 0 means DefaultAckTimeout.
	AckTimeout time.Duration
}

// Producer enqueues tasks. It is safe for concurrent use. It does not own
// the NATS connection it is given.
type Producer struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	results jetstream.KeyValue
	cancels jetstream.KeyValue
	window  int
	// ackTimeout bounds EnqueueMany's wait for acks; see Config.
	ackTimeout time.Duration
	// batching: forq.StreamTasks takes fast batch publishes.
	batching bool
	clock    clock // the broker's clock as this producer sees it
	unique   uniqueKeys
}

// Info describes an enqueued task.
type Info struct {
	// ID of the task.
	ID string
	// Queue it went to.
	Queue string
	// Sequence is the task's sequence number in forq.StreamTasks. It is 0
	// for a duplicate, and for all but the last task of an EnqueueMany
	// sent as one batch (see EnqueueMany).
	Sequence uint64
	// Duplicate is true when the broker already had a task with this ID
	// inside its duplicate window; nothing new was enqueued.
	Duplicate bool
}

// New returns a Producer on nc, declaring forq's streams and results bucket
// if they do not exist yet.
func New(ctx context.Context, nc *nats.Conn, cfg Config) (*Producer, error) {
	if cfg.Window < 0 {
		return nil, fmt.Errorf("producer: %w: window %d is negative", forq.ErrInvalidOption, cfg.Window)
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.AckTimeout < 0 {
		return nil, fmt.Errorf("producer: %w: ack timeout %s is negative", forq.ErrInvalidOption, cfg.AckTimeout)
	}
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	h, err := topology.Ensure(ctx, js, topology.Options{
		Replicas:        cfg.Replicas,
		ResultTTL:       cfg.ResultTTL,
		DuplicateWindow: cfg.DuplicateWindow,
	})
	if err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	return &Producer{nc: nc, js: js, results: h.Results, cancels: h.Cancel, window: cfg.Window, ackTimeout: cfg.AckTimeout, batching: h.Batching, clock: clock{now: cfg.Clock}, unique: uniqueKeys{kv: h.Unique, ttl: cfg.UniqueTTL}}, nil
}

// Option changes how a task is enqueued; it overrides the Task's field.
type Option func(*forq.Task) error

// WithQueue sends the task to queue.
func WithQueue(queue string) Option {
	return func(t *forq.Task) error {
		if err := forq.ValidateQueue(queue); err != nil {
			return fmt.Errorf("%w: %w", forq.ErrInvalidOption, err)
		}
		t.Queue = queue
		return nil
	}
}

// WithMaxAttempts lets the task run at most n times (n ≥ 1).
func WithMaxAttempts(n int) Option {
	return func(t *forq.Task) error {
		if n < 1 {
			return fmt.Errorf("%w: max attempts %d is less than 1", forq.ErrInvalidOption, n)
		}
		t.MaxAttempts = n
		return nil
	}
}

// WithTimeout bounds each attempt of the task to d (d > 0).
func WithTimeout(d time.Duration) Option {
	return func(t *forq.Task) error {
		if d <= 0 {
			return fmt.Errorf("%w: timeout %s is not positive", forq.ErrInvalidOption, d)
		}
		t.Timeout = d
		return nil
	}
}

// WithID gives the task its ID, e.g. one derived from the work so that a
// retried enqueue is dropped as a duplicate.
func WithID(id string) Option {
	return func(t *forq.Task) error {
		if id == "" {
			return fmt.Errorf("%w: empty task ID", forq.ErrInvalidOption)
		}
		t.ID = id
		return nil
	}
}

// WithDeadline makes the task expire if no worker has started it by t:
// the broker drops it and it ends in state expired without running.
func WithDeadline(t time.Time) Option {
	return func(task *forq.Task) error {
		if !t.After(time.Now()) {
			return fmt.Errorf("%w: deadline %s is not in the future", forq.ErrInvalidOption, t.Format(time.RFC3339))
		}
		task.Deadline = t
		return nil
	}
}

// WithExpiresIn makes the task expire if no worker has started it within d.
func WithExpiresIn(d time.Duration) Option {
	return func(task *forq.Task) error {
		if d <= 0 {
			return fmt.Errorf("%w: expiry %s is not positive", forq.ErrInvalidOption, d)
		}
		task.Deadline = time.Now().Add(d)
		return nil
	}
}

// errExpired is the error recorded for an expired task.
const errExpired = "not started before its deadline"

// WithPriority sets the task's priority level within its queue: workers
// start high tasks before normal ones, and normal ones before low ones.
// forq.ParsePriority reads a level from a string.
func WithPriority(p forq.Priority) Option {
	return func(t *forq.Task) error {
		if !p.Valid() {
			return fmt.Errorf("%w: priority %d: use forq.PriorityLow, forq.PriorityNormal or forq.PriorityHigh", forq.ErrInvalidOption, p)
		}
		t.Priority = p
		return nil
	}
}

// WithRecord asks workers to record the task's state and result so that
// Wait and Result can find it.
func WithRecord() Option {
	return func(t *forq.Task) error {
		t.Record = true
		return nil
	}
}

// Enqueue publishes one task and returns once the broker has stored it.
// Errors wrap forq.ErrInvalidTask, forq.ErrInvalidQueue,
// forq.ErrInvalidOption or forq.ErrPayloadTooLarge for bad input, or the
// broker's error.
func (p *Producer) Enqueue(ctx context.Context, task forq.Task, opts ...Option) (*Info, error) {
	msg, err := p.prepare(ctx, &task, opts)
	if id, ok := duplicateOf(err); ok {
		return &Info{ID: id, Queue: task.Queue, Duplicate: true}, nil
	}
	if err != nil {
		return nil, err
	}
	ack, err := p.js.PublishMsg(ctx, msg)
	if err != nil {
		p.forget(task)
		return nil, fmt.Errorf("enqueue %s: %w", task.ID, err)
	}
	return &Info{ID: task.ID, Queue: task.Queue, Sequence: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// BatchError reports the tasks of an EnqueueMany that were not enqueued.
// Errs has one entry per task given, nil for each one that was.
type BatchError struct {
	Errs []error
}

// Error says how many tasks failed and why the first one did.
func (e *BatchError) Error() string {
	n, first := 0, error(nil)
	for _, err := range e.Errs {
		if err != nil {
			if first == nil {
				first = err
			}
			n++
		}
	}
	return fmt.Sprintf("%d of %d tasks not enqueued; first: %v", n, len(e.Errs), first)
}

// Unwrap returns the errors of the tasks that failed.
func (e *BatchError) Unwrap() []error {
	var errs []error
	for _, err := range e.Errs {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// EnqueueMany publishes tasks asynchronously, at most the producer's window
// in flight at once, and returns once the broker has acknowledged each one.
// infos[i] describes tasks[i]. If any task was not enqueued the error is a
// *BatchError saying which; the others were enqueued. opts apply to every
// task. Invalid tasks are reported before anything is published. Each
// task's ID is set in tasks, so enqueueing the same slice again (after an
// ErrNoAck, say) does not enqueue a task twice.
//
// When EnqueueMany makes the IDs (none is set in tasks or opts) and no
// task is delayed, the tasks go to the broker as one fast batch (NATS 2.14
// and later): the broker acknowledges every few hundred tasks instead of
// each one, which costs both sides less. Only the last task's Info then
// has its Sequence. Otherwise each task is acknowledged on its own, with
// its Sequence and Duplicate.
func (p *Producer) EnqueueMany(ctx context.Context, tasks []forq.Task, opts ...Option) ([]Info, error) {
	// Every task is checked (and its unique key and record taken) before
	// any is published; each message is built again as it is published,
	// in one reused buffer.
	buf := newMsgBuf()
	skip := make([]bool, len(tasks))
	var dups map[int]string // tasks whose unique key another task holds
	// Tasks whose IDs are made here are new to the broker: they can go as
	// one fast batch, which does not say which tasks were duplicates.
	fast := p.batching && !setsID(opts)
	for i := range tasks {
		fast = fast && tasks[i].ID == ""
		err := p.check(ctx, &tasks[i], opts, buf)
		if id, ok := duplicateOf(err); ok {
			if dups == nil {
				dups = map[int]string{}
			}
			dups[i], skip[i] = id, true
			continue
		}
		if err != nil {
			for j := range i {
				p.forget(tasks[j])
			}
			return nil, fmt.Errorf("task %d: %w", i, err)
		}
	}
	n := 0
	for i := range tasks {
		if !skip[i] {
			n++
			fast = fast && !scheduled(&tasks[i])
		}
	}
	infos := make([]Info, len(tasks))
	errs := make([]error, len(tasks))
	build := func(i int) (*nats.Msg, error) {
		if skip[i] {
			return nil, nil
		}
		if err := p.encode(ctx, &tasks[i], buf); err != nil {
			return nil, err
		}
		return &buf.m, nil
	}
	var acks []pubAck
	var err error
	if fast && n > 1 {
		acks, err = publishFastBatch(ctx, p.nc, len(tasks), build, p.window, p.ackTimeout)
	}
	if acks == nil && (err == nil || errors.Is(err, errBatchRefused)) {
		acks, err = publishBatch(ctx, p.nc, len(tasks), build, p.window, p.ackTimeout)
	}
	if err != nil {
		for i := range tasks {
			p.forget(tasks[i])
		}
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	for i, a := range acks {
		switch {
		case skip[i]:
			infos[i] = Info{ID: dups[i], Queue: tasks[i].Queue, Duplicate: true}
		case a.err != nil:
			errs[i] = fmt.Errorf("enqueue %s: %w", tasks[i].ID, a.err)
		default:
			infos[i] = Info{ID: tasks[i].ID, Queue: tasks[i].Queue, Sequence: a.seq, Duplicate: a.dup}
		}
	}
	failed := false
	for i, err := range errs {
		if err != nil {
			failed = true
			p.forget(tasks[i])
		}
	}
	if failed {
		return infos, &BatchError{Errs: errs}
	}
	return infos, nil
}

// setsID reports whether opts give the task an ID.
func setsID(opts []Option) bool {
	var t forq.Task
	for _, o := range opts {
		_ = o(&t)
	}
	return t.ID != ""
}

// prepare validates the task, applies opts, records it as queued if it
// asks for a record, and builds its message.
func (p *Producer) prepare(ctx context.Context, t *forq.Task, opts []Option) (*nats.Msg, error) {
	b := newMsgBuf()
	if err := p.check(ctx, t, opts, b); err != nil {
		return nil, err
	}
	return &b.m, nil
}

// msgBuf is a task's message and the values of its three usual headers,
// reused from one task to the next by EnqueueMany: nats.Conn.PublishMsg
// has copied a message's bytes by the time it returns.
type msgBuf struct {
	m    nats.Msg
	vals [3]string
}

func newMsgBuf() *msgBuf { return &msgBuf{m: nats.Msg{Header: make(nats.Header, 4)}} }

// check applies opts to t, validates it, encodes it into b, checks its
// size, claims its unique key and records it as queued if it asks for a
// record.
func (p *Producer) check(ctx context.Context, t *forq.Task, opts []Option, b *msgBuf) error {
	for _, o := range opts {
		if err := o(t); err != nil {
			return err
		}
	}
	if err := t.Validate(); err != nil {
		return err
	}
	if err := p.encode(ctx, t, b); err != nil {
		return err
	}
	m := &b.m
	if max := p.nc.MaxPayload(); max > 0 {
		size := int64(len(m.Data)) + headerSize(m.Header) + int64(len(m.Subject))
		if size > max {
			return fmt.Errorf("%w: task %s is %d bytes with its headers; the broker accepts at most %d", forq.ErrPayloadTooLarge, t.ID, size, max)
		}
	}
	if t.UniqueKey != "" {
		if err := p.claimUnique(ctx, t); err != nil {
			return err
		}
	}
	if t.Record {
		b, _ := json.Marshal(forq.Result{ID: t.ID, Queue: t.Queue, Type: t.Type, State: forq.StateQueued, Deadline: t.Deadline, ScheduledAt: t.At})
		if _, err := p.results.Create(ctx, t.ID, b); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			p.releaseUnique(*t)
			return fmt.Errorf("enqueue %s: record: %w", t.ID, err)
		}
	}
	return nil
}

// encode writes validated task t into b as its message, replacing what b
// held. A delayed task's delay is resolved into t.At the first time, so
// encoding t again gives the same message.
func (p *Producer) encode(ctx context.Context, t *forq.Task, b *msgBuf) error {
	m := &b.m
	clear(m.Header)
	m.Subject, m.Reply, m.Data = forq.LevelSubject(t.Queue, t.Priority), "", t.Payload
	// The keys are canonical already, so they are set directly, with
	// values in b. Forq-Max-Attempts is left out at the default, which is
	// what its absence means: every header costs the broker on every
	// message (docs/bench.md).
	b.vals = [...]string{t.ID, t.Type, ""}
	m.Header[forq.HeaderID] = b.vals[0:1:1]
	m.Header[forq.HeaderType] = b.vals[1:2:2]
	if t.MaxAttempts != forq.DefaultMaxAttempts {
		b.vals[2] = strconv.Itoa(t.MaxAttempts)
		m.Header[forq.HeaderMaxAttempts] = b.vals[2:3:3]
	}
	if t.Timeout > 0 {
		m.Header.Set(forq.HeaderTimeout, t.Timeout.String())
	}
	if t.Record {
		m.Header.Set(forq.HeaderRecord, "1")
	}
	if t.Priority != forq.PriorityNormal {
		m.Header.Set(forq.HeaderPriority, t.Priority.String())
	}
	if t.LockKey != "" {
		m.Header.Set(forq.HeaderLock, t.LockKey)
	}
	if t.UniqueKey != "" {
		m.Header.Set(forq.HeaderUnique, t.UniqueKey)
	}
	if !t.Deadline.IsZero() {
		m.Header.Set(forq.HeaderDeadline, t.Deadline.UTC().Format(time.RFC3339Nano))
		// The broker's TTL is in whole seconds, at least one.
		m.Header.Set("Nats-TTL", strconv.FormatInt(max(1, int64(math.Ceil(time.Until(t.Deadline).Seconds()))), 10)+"s")
	}
	if scheduled(t) {
		return p.schedule(ctx, t, m)
	}
	return nil
}

// forget removes the queued record of a task whose enqueue failed, so that
// nobody waits for a task that does not exist.
func (p *Producer) forget(t forq.Task) {
	p.releaseUnique(t)
	if !t.Record || t.ID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if e, err := p.results.Get(ctx, t.ID); err == nil {
		var r forq.Result
		if json.Unmarshal(e.Value(), &r) == nil && r.State == forq.StateQueued {
			_ = p.results.Delete(ctx, t.ID, jetstream.LastRevision(e.Revision()))
		}
	}
}

func headerSize(h nats.Header) int64 {
	n := int64(len("NATS/1.0\r\n\r\n"))
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

// Result returns the recorded result of task id as it is now. The error
// wraps forq.ErrResultNotFound when there is none.
func (p *Producer) Result(ctx context.Context, id string) (*forq.Result, error) {
	e, err := p.results.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("result %s: %w", id, forq.ErrResultNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("result %s: %w", id, err)
	}
	return decode(id, e.Value())
}

// Wait blocks until task id reaches a final state (succeeded, dead or
// canceled) and returns its result. It watches the result's key, so it does
// not poll. The task must have been enqueued WithRecord, or Wait sees only
// a failure; bound it with ctx. A result whose state is not
// forq.StateSucceeded is returned with a nil error: look at its State.
func (p *Producer) Wait(ctx context.Context, id string) (*forq.Result, error) {
	w, err := p.results.Watch(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("wait %s: %w", id, err)
	}
	defer w.Stop()
	// A task that expires in the queue gets no update: wake at its
	// deadline and look again.
	expiry := time.NewTimer(time.Hour)
	expiry.Stop()
	defer expiry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait %s: %w", id, ctx.Err())
		case <-expiry.C:
			if r, err := p.Result(ctx, id); err == nil && r.State.Final() {
				return r, nil
			}
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("wait %s: watch closed", id)
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue // end of the initial values, or a delete
			}
			r, err := decode(id, e.Value())
			if err != nil {
				return nil, err
			}
			if r.State.Final() {
				return r, nil
			}
			if r.State == forq.StateQueued && !r.Deadline.IsZero() {
				expiry.Reset(time.Until(r.Deadline) + 10*time.Millisecond)
			}
		}
	}
}

func decode(id string, b []byte) (*forq.Result, error) {
	var r forq.Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("result %s: malformed record: %w", id, err)
	}
	if r.State == forq.StateQueued && !r.Deadline.IsZero() && time.Now().After(r.Deadline) {
		// Never started before its deadline: the broker drops it, or a
		// worker that receives it late drops it as expired.
		r.State, r.Error = forq.StateExpired, errExpired
	}
	return &r, nil
}
