// Package producer enqueues forq tasks and waits for their results.
//
// An Enqueue that returned nil is durable: the broker's stream has stored
// the task (on a cluster, on a quorum of replicas). Enqueueing a task ID
// again inside the stream's duplicate window is a no-op that reports the
// first enqueue's sequence with Info.Duplicate set.
package producer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/kvcas"
	"github.com/forqhq/forq/internal/record"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
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
	// tasks is forq.StreamTasks as New found it: its info says the
	// version of the server that leads it (see topology.Require).
	tasks  jetstream.Stream
	clock  clock // the broker's clock as this producer sees it
	unique uniqueKeys
	// conn cancels publishes cut off by a connection drop; retryWindow
	// bounds how long after its first try Enqueue publishes a task again
	// (see retry.go).
	conn        *connWatch
	retryWindow time.Duration
	apiTimeout  time.Duration // the JetStream client's default timeout
	// unrecorded: the last tasks enqueued without a record, which Wait
	// does not wait for (see unrecorded.go).
	unrecorded unrecorded
	// counts are what Collector reports.
	counts queueCounts
	// noBatchGet: the broker did not answer WaitMany's batched read of
	// results (see watchKeys).
	noBatchGet atomic.Bool
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
// if they do not exist yet. The error wraps forq.ErrStorageFull when the
// broker cannot answer because its disk is full, and forq.ErrServerTooOld
// when it is older than NATS 2.11 (see the README's "Server versions").
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
		sc := storageCheck{ctx: ctx, nc: nc}
		return nil, fmt.Errorf("producer: %w", sc.wrap(err))
	}
	return &Producer{nc: nc, js: js, results: h.Results, cancels: h.Cancel, window: cfg.Window, ackTimeout: cfg.AckTimeout, batching: h.Batching, tasks: h.Tasks, clock: clock{now: cfg.Clock}, unique: uniqueKeys{kv: h.Unique, ttl: cfg.UniqueTTL},
		conn: watchConn(nc), retryWindow: h.Tasks.CachedInfo().Config.Duplicates * 9 / 10, apiTimeout: js.Options().DefaultTimeout}, nil
}

// Enqueue publishes one task and returns once the broker has stored it.
// It rides out a broker restart: a publish cut off by the connection's drop,
// or that finds the broker's JetStream not up yet, is sent again (with the
// same task ID, so the broker stores the task once) until ctx ends, for at
// most nine tenths of the stream's duplicate window. Errors wrap
// forq.ErrInvalidTask, forq.ErrInvalidQueue, forq.ErrInvalidOption or
// forq.ErrPayloadTooLarge for bad input, forq.ErrStorageFull when the
// broker has no room for the task (its storage limit reached, or its disk
// full: see broker.Server.Health), forq.ErrServerTooOld for a delayed task
// on a broker older than NATS 2.12, or the broker's error (the context's
// error when ctx ended first).
func (p *Producer) Enqueue(ctx context.Context, task forq.Task, opts ...Option) (*Info, error) {
	msg, err := p.prepare(ctx, &task, collect(opts))
	if id, ok := duplicateOf(err); ok {
		p.counts.of(task.Queue).duplicates.Add(1)
		return &Info{ID: id, Queue: task.Queue, Duplicate: true}, nil
	}
	if err != nil {
		return nil, err
	}
	ack, err := p.publish(ctx, &msg.Msg)
	release(msg)
	if err != nil {
		p.counts.of(task.Queue).failed.Add(1)
		p.forget(task)
		sc := storageCheck{ctx: ctx, nc: p.nc}
		return nil, fmt.Errorf("enqueue %s: %w", task.ID, sc.wrap(err))
	}
	if ack.dup {
		p.counts.of(task.Queue).duplicates.Add(1)
	} else {
		p.counts.of(task.Queue).enqueued.Add(1)
		p.unrecorded.note(&task)
	}
	return &Info{ID: task.ID, Queue: task.Queue, Sequence: ack.seq, Duplicate: ack.dup}, nil
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
	buf := wire.NewMsg()
	o := collect(opts)
	// Tasks whose IDs are made here are new to the broker: they can go as
	// one fast batch, which does not say which tasks were duplicates.
	fast := p.batching && !o.id.ok
	for i := range tasks {
		fast = fast && tasks[i].ID == ""
	}
	skip, dups, err := p.checkMany(ctx, tasks, o, buf)
	if err != nil {
		return nil, err
	}
	n := 0
	for i := range tasks {
		if !skip[i] {
			n++
			fast = fast && !scheduled(&tasks[i])
		}
	}
	build := func(i int) (*nats.Msg, error) {
		if skip[i] {
			return nil, nil
		}
		if err := p.encode(ctx, &tasks[i], buf); err != nil {
			return nil, err
		}
		return &buf.Msg, nil
	}
	var acks []pubAck
	if fast && n > 1 {
		acks, err = publishFastBatch(ctx, p.nc, len(tasks), build, p.window, p.ackTimeout)
	}
	if acks == nil && (err == nil || errors.Is(err, errBatchRefused)) {
		acks, err = publishBatch(ctx, p.nc, len(tasks), build, p.window, p.ackTimeout)
	}
	sc := storageCheck{ctx: ctx, nc: p.nc}
	if err != nil {
		for i := range tasks {
			if !skip[i] {
				p.counts.of(tasks[i].Queue).failed.Add(1)
			}
			p.forget(tasks[i])
		}
		return nil, fmt.Errorf("enqueue: %w", sc.wrap(err))
	}
	return p.settleMany(tasks, acks, skip, dups, sc)
}

// checkMany checks every task of an EnqueueMany with o (see check), before
// any is published: skip says which not to publish, as dups says whose
// unique key another task, dups[i], holds. On an error nothing is taken.
func (p *Producer) checkMany(ctx context.Context, tasks []forq.Task, o *options, buf *wire.Msg) (skip []bool, dups map[int]string, err error) {
	skip = make([]bool, len(tasks))
	var recorded []int
	for i := range tasks {
		err := p.check(ctx, &tasks[i], o, buf, true)
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
			return nil, nil, fmt.Errorf("task %d: %w", i, err)
		}
		if recordAtEnqueue(&tasks[i]) {
			recorded = append(recorded, i)
		}
	}
	// Every record is made before any task is published, as Enqueue does.
	if err := p.recordManyQueued(ctx, tasks, recorded); err != nil {
		for i := range tasks {
			p.forget(tasks[i])
		}
		return nil, nil, err
	}
	return skip, dups, nil
}

// settleMany turns the acks of an EnqueueMany into its Infos, and its
// error if some tasks were not enqueued (their records and unique keys
// given up).
func (p *Producer) settleMany(tasks []forq.Task, acks []pubAck, skip []bool, dups map[int]string, sc storageCheck) ([]Info, error) {
	infos := make([]Info, len(tasks))
	errs := make([]error, len(tasks))
	failed := false
	for i, a := range acks {
		n := p.counts.of(tasks[i].Queue)
		switch {
		case skip[i]:
			infos[i] = Info{ID: dups[i], Queue: tasks[i].Queue, Duplicate: true}
			n.duplicates.Add(1)
		case a.err != nil:
			errs[i], failed = fmt.Errorf("enqueue %s: %w", tasks[i].ID, sc.wrap(a.err)), true
			p.forget(tasks[i])
			n.failed.Add(1)
		default:
			infos[i] = Info{ID: tasks[i].ID, Queue: tasks[i].Queue, Sequence: a.seq, Duplicate: a.dup}
			if a.dup {
				n.duplicates.Add(1)
			} else {
				n.enqueued.Add(1)
			}
		}
	}
	p.unrecorded.enqueued(tasks, func(i int) bool { return !skip[i] && errs[i] == nil && !infos[i].Duplicate })
	if failed {
		return infos, &BatchError{Errs: errs}
	}
	return infos, nil
}

// msgs are Enqueue's messages, reused once published: a message and
// its headers are most of what an enqueue allocates.
var msgs = sync.Pool{New: func() any { return wire.NewMsg() }}

// prepare applies o to the task and validates it, records it as queued if it
// asks for a record, and builds its message, from msgs: put it back once
// published.
func (p *Producer) prepare(ctx context.Context, t *forq.Task, o *options) (*wire.Msg, error) {
	b := msgs.Get().(*wire.Msg)
	if err := p.check(ctx, t, o, b, false); err != nil {
		release(b)
		return nil, err
	}
	return b, nil
}

// release puts a message of prepare back into msgs, once published (the
// connection has copied its bytes by then), without the caller's payload.
func release(b *wire.Msg) {
	b.Data = nil
	msgs.Put(b)
}

// check applies o to t and validates it, encodes it into b, checks its
// size, claims its unique key and records it as queued if it asks for a
// record, unless later: its caller records it then.
func (p *Producer) check(ctx context.Context, t *forq.Task, o *options, b *wire.Msg, later bool) error {
	if err := o.apply(t); err != nil {
		return err
	}
	if err := p.encode(ctx, t, b); err != nil {
		return err
	}
	m := &b.Msg
	if limit := p.nc.MaxPayload(); limit > 0 {
		size := int64(len(m.Data)) + headerSize(m.Header) + int64(len(m.Subject))
		if size > limit {
			return fmt.Errorf("%w: task %s is %d bytes with its headers; the broker accepts at most %d", forq.ErrPayloadTooLarge, t.ID, size, limit)
		}
	}
	if t.UniqueKey != "" {
		if err := p.claimUnique(ctx, t); err != nil {
			return err
		}
	}
	if recordAtEnqueue(t) && !later {
		return p.recordQueued(ctx, t)
	}
	return nil
}

// recordAtEnqueue reports whether t's record is made as it is enqueued, in
// state queued: a recorded task with a delay (its record says when it is
// due) or a deadline (a task the broker drops at its deadline never
// reaches a worker; its queued record is what reads as expired then: see
// record.View). Any other recorded task gets its record when a worker
// starts it (record.Store.Start), or when it is canceled before that: one
// write to the bucket per task fewer, and one update fewer for a waiter's
// watch to read. Until then it has none: Result says so, with
// forq.ErrResultNotFound, and Wait and WaitMany wait for it.
func recordAtEnqueue(t *forq.Task) bool {
	return t.Record && (scheduled(t) || !t.Deadline.IsZero())
}

// queued returns the record of t as it is enqueued.
func queued(t *forq.Task) *forq.Result {
	return &forq.Result{ID: t.ID, Queue: t.Queue, Type: t.Type, State: forq.StateQueued, Deadline: t.Deadline, ScheduledAt: t.At}
}

// recordQueued records t as queued; on an error it releases t's unique
// key.
func (p *Producer) recordQueued(ctx context.Context, t *forq.Task) error {
	// A record there already (the task enqueued before) stays.
	if err := record.New(p.results).Set(ctx, record.Enqueue, t.ID, nil, 0, queued(t)); err != nil && !kvcas.IsConflict(err) {
		p.releaseUnique(*t)
		sc := storageCheck{ctx: ctx, nc: p.nc}
		return fmt.Errorf("enqueue %s: record: %w", t.ID, sc.wrap(err))
	}
	return nil
}

// recordManyQueued records the tasks of an EnqueueMany at is as queued,
// as recordQueued does one by one, but with their writes in flight at
// once: one round trip, not one per task. A task whose key has a value
// (or a deleted one) goes through recordQueued. On an error the tasks
// are left to forget.
func (p *Producer) recordManyQueued(ctx context.Context, tasks []forq.Task, at []int) error {
	switch len(at) {
	case 0:
		return nil
	case 1:
		return p.recordQueued(ctx, &tasks[at[0]])
	}
	records := record.New(p.results)
	acks, err := publishBatch(ctx, p.nc, len(at), func(k int) (*nats.Msg, error) {
		return records.CreateMsg(record.Enqueue, queued(&tasks[at[k]]))
	}, p.window, p.ackTimeout)
	if err != nil {
		return err
	}
	for k, a := range acks {
		t := &tasks[at[k]]
		switch {
		case kvcas.IsConflict(a.err):
			if err := p.recordQueued(ctx, t); err != nil {
				return fmt.Errorf("task %d: %w", at[k], err)
			}
		case a.err != nil:
			sc := storageCheck{ctx: ctx, nc: p.nc}
			return fmt.Errorf("task %d: enqueue %s: record: %w", at[k], t.ID, sc.wrap(a.err))
		}
	}
	return nil
}

// encode writes validated task t into b as its message, replacing what b
// held (see wire.Msg.Encode). A delayed task's delay is resolved into t.At
// the first time, so encoding t again gives the same message.
func (p *Producer) encode(ctx context.Context, t *forq.Task, b *wire.Msg) error {
	b.Encode(t)
	if scheduled(t) {
		return p.schedule(ctx, t, &b.Msg)
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
	records := record.New(p.results)
	if r, rev, err := records.Get(ctx, t.ID); err == nil && r != nil {
		_ = records.Set(ctx, record.Forget, t.ID, r, rev, nil) // only a queued record goes
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
	r, _, err := record.New(p.results).Get(ctx, id)
	switch {
	case errors.Is(err, record.ErrMalformed):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("result %s: %w", id, err)
	case r == nil:
		return nil, fmt.Errorf("result %s: %w", id, forq.ErrResultNotFound)
	}
	record.View(r, time.Now())
	return r, nil
}

// Wait blocks until task id reaches a final state (succeeded, dead or
// canceled) and returns its result. It watches the result's key, so it does
// not poll; when the connection to the broker drops it watches again once
// it is back, so a broker restart delays it no more than the restart. The
// task must have been enqueued WithRecord (or to a queue that records
// every task): for a task this producer enqueued without a record, Wait
// returns its final record if it has one (a task that died has), and an
// error wrapping forq.ErrNotRecorded at once if not. A task it did not
// enqueue is waited for until it has a final record, or ctx ends. A result whose state is not forq.StateSucceeded is returned
// with a nil error: look at its State.
func (p *Producer) Wait(ctx context.Context, id string) (*forq.Result, error) {
	// A task that expires in the queue gets no update: wake at its
	// deadline and look again.
	expiry := time.NewTimer(time.Hour)
	expiry.Stop()
	defer expiry.Stop()
	for {
		drop := p.conn.dropCh()
		w, err := p.results.Watch(ctx, id)
		if err != nil {
			if p.watchAgain(ctx, err) {
				continue
			}
			return nil, fmt.Errorf("wait %s: %w", id, err)
		}
		r, again, err := p.waitOn(ctx, id, w, drop, expiry)
		_ = w.Stop()
		if !again {
			return r, err
		}
	}
}

// waitOn is Wait on one watch; again is true when the connection dropped
// and Wait must watch again.
func (p *Producer) waitOn(ctx context.Context, id string, w jetstream.KeyWatcher, drop <-chan struct{}, expiry *time.Timer) (r *forq.Result, again bool, err error) {
	for {
		select {
		case <-ctx.Done():
			return nil, false, fmt.Errorf("wait %s: %w", id, ctx.Err())
		case <-drop:
			return nil, true, nil
		case <-expiry.C:
			if r, err := p.Result(ctx, id); err == nil && r.State.Final() {
				return r, false, nil
			}
		case e, ok := <-w.Updates():
			if !ok {
				return nil, false, fmt.Errorf("wait %s: watch closed", id)
			}
			if e == nil && len(p.neverRecorded(ctx, []string{id})) > 0 {
				// Its current value is in, and not final: a task enqueued
				// here without a record will not get a final one.
				return nil, false, notRecorded([]string{id}, 1)
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue // end of the initial values, or a delete
			}
			r, err := record.Read(id, e.Value())
			if err != nil {
				return nil, false, err
			}
			if r.State.Final() {
				return r, false, nil
			}
			if r.State == forq.StateQueued && !r.Deadline.IsZero() {
				expiry.Reset(time.Until(r.Deadline) + 10*time.Millisecond)
			}
		}
	}
}
