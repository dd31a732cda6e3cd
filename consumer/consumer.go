package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of Config.
const (
	DefaultConcurrency = 1
	DefaultGrace       = 10 * time.Second
	DefaultRetryBase   = time.Second
	DefaultRetryMax    = 5 * time.Minute
	// DefaultFetchWait is how long one pull request waits at the broker
	// for tasks. It bounds how long a stop waits for the fetch in flight.
	DefaultFetchWait = time.Second
	// DefaultStatusInterval is how often a worker publishes its status.
	DefaultStatusInterval = 2 * time.Second
)

// ErrPermanent marks a handler error that must not be retried: the task is
// dead-lettered at once. Wrap it: fmt.Errorf("bad payload: %w", ErrPermanent).
var ErrPermanent = errors.New("permanent failure")

// ErrMaxTasks is returned by Run when the worker stopped because it ran
// Config.MaxTasks tasks; a supervisor replaces such a worker.
var ErrMaxTasks = errors.New("ran its maximum number of tasks")

// ErrNoHandler is the error recorded for a task whose type has no handler
// on the worker that received it. Such a task is retried like any failure
// (another worker of the queue may know the type) and dead-lettered after
// its attempts.
var ErrNoHandler = errors.New("no handler for task type")

// Task is a task as a handler sees it.
type Task struct {
	// ID, Queue and Type of the task.
	ID, Queue, Type string
	// Payload as enqueued.
	Payload []byte
	// Attempt is 1 on the first run, counted by the broker's deliveries.
	Attempt int
	// MaxAttempts the task may make.
	MaxAttempts int
	// Header has the message's headers, for Forq-* headers a feature adds.
	Header nats.Header
	// Priority is the level of the queue the task came from.
	Priority forq.Priority

	msg  jetstream.Msg
	lock *lockHold // the task's lock while it holds one
}

// InProgress tells the broker the task is still being worked on. The worker
// does this on its own while the handler runs; a handler may call it too.
func (t *Task) InProgress() error { return t.msg.InProgress() }

// Handler runs tasks of one type. Its result bytes are recorded when the
// task asked for a record. ctx is canceled at the task's timeout, when the
// task is canceled, or when the worker's grace period ends at shutdown.
type Handler interface {
	Handle(ctx context.Context, t *Task) ([]byte, error)
}

// HandlerFunc adapts a function to a Handler.
type HandlerFunc func(ctx context.Context, t *Task) ([]byte, error)

// Handle calls f(ctx, t).
func (f HandlerFunc) Handle(ctx context.Context, t *Task) ([]byte, error) { return f(ctx, t) }

// Config configures a Worker. The zero value works: queue "default", one
// handler at a time.
type Config struct {
	// Queues to pull from; empty means forq.DefaultQueue. The worker
	// serves every priority level of each, highest first; see priority.go.
	Queues []string
	// Order chooses between Queues within a priority level: OrderStrict
	// (the default, "") or OrderWeighted.
	Order Order
	// Weights of the queues with OrderWeighted, by queue name; a queue
	// not named weighs 1.
	Weights map[string]int
	// IdlePoll bounds the long poll of an idle worker, so that it notices
	// tasks of its other levels and queues within about that time; 0
	// means DefaultIdlePoll. The long poll is also bounded by FetchWait.
	IdlePoll time.Duration
	// Concurrency is how many handlers run at once in this process;
	// 0 means DefaultConcurrency.
	Concurrency int
	// AckWait of a queue's consumer when this worker is the first to
	// declare it; 0 means forq.DefaultAckWait. An existing consumer keeps
	// its own.
	AckWait time.Duration
	// Grace is how long a stop lets running handlers finish before their
	// contexts are canceled; 0 means DefaultGrace.
	Grace time.Duration
	// RetryBase and RetryMax shape the back-off before attempt n+1:
	// RetryBase·2^(n-1), capped at RetryMax, with jitter in [½, 1]×.
	RetryBase, RetryMax time.Duration
	// MaxTasks makes Run return ErrMaxTasks after this many tasks; 0 means
	// no limit.
	MaxTasks int
	// FetchWait is how long one pull waits at the broker; 0 means
	// DefaultFetchWait.
	FetchWait time.Duration
	// Observer, if not nil, is told how every task delivery ends.
	Observer Observer
	// StatusInterval is how often the worker rewrites its status in
	// forq.BucketWorkers (what "forq stats" lists); 0 means
	// DefaultStatusInterval, negative turns it off.
	StatusInterval time.Duration
	// Logger gets the worker's events; nil means slog.Default().
	Logger *slog.Logger
	// Replicas, ResultTTL and DuplicateWindow apply when this worker is the
	// first process to declare forq's streams and bucket.
	Replicas        int
	ResultTTL       time.Duration
	DuplicateWindow time.Duration
	// LockTTL is how long the lock of a task with a lock key outlives this
	// worker if it dies; 0 means forq.DefaultLockTTL. See lock.go.
	LockTTL time.Duration
	// LockWait is the first delay before a task whose lock is busy is
	// offered again; 0 means DefaultLockWait.
	LockWait time.Duration
	// AckLinger is how long a finished task's ack may wait for those of
	// other tasks still running, so that they reach the broker together;
	// 0 means DefaultAckLinger, negative sends each ack at once. An idle
	// worker's acks are never held. See acker.go.
	AckLinger time.Duration
}

// Worker pulls tasks and runs their handlers. Register handlers before Run.
type Worker struct {
	cfg      Config
	nc       *nats.Conn
	js       jetstream.JetStream
	h        *topology.Handles
	log      *slog.Logger
	host     string
	pid      int
	handlers map[string]Handler

	slots     chan struct{}
	claimed   atomic.Int64 // tasks fetched toward MaxTasks
	processed atomic.Int64
	inflight  atomic.Int64
	// queueRecord says which queues record every task (forq.MetadataRecord).
	queueRecord atomic.Pointer[map[string]bool]
	started     time.Time
	window      *window
	locks       lockState
	acker       *acker // while Run runs

	mu       sync.Mutex
	running  map[*run]struct{}   // one per runner goroutine
	canceled map[string]struct{} // task IDs with a cancel request
	stopping error               // set when the grace is over: the cause for handlers
}

// run is a runner goroutine's current task, guarded by Worker.mu: id and
// cancel are set while a handler runs ("" and nil between tasks); msg, beat
// and next drive its heartbeats. A runner keeps its run for its life, so a
// task costs no map insert.
type run struct {
	id     string
	cancel context.CancelCauseFunc
	msg    jetstream.Msg
	beat   time.Duration
	next   time.Time
}

// errStopping is the cause given to handlers canceled at the end of a stop.
var errStopping = errors.New("worker stopping: grace period over")

// New returns a Worker on nc and declares forq's streams, bucket and the
// consumers of cfg.Queues. Errors wrap forq.ErrInvalidQueue or
// forq.ErrInvalidOption for bad config, or the broker's error.
func New(ctx context.Context, nc *nats.Conn, cfg Config) (*Worker, error) {
	if len(cfg.Queues) == 0 {
		cfg.Queues = []string{forq.DefaultQueue}
	}
	for _, q := range cfg.Queues {
		if err := forq.ValidateQueue(q); err != nil {
			return nil, fmt.Errorf("consumer: %w", err)
		}
	}
	if cfg.Concurrency < 0 || cfg.MaxTasks < 0 || cfg.Grace < 0 || cfg.RetryBase < 0 || cfg.RetryMax < 0 || cfg.FetchWait < 0 {
		return nil, fmt.Errorf("consumer: %w: negative concurrency, max tasks or duration", forq.ErrInvalidOption)
	}
	if err := checkLockConfig(&cfg); err != nil {
		return nil, err
	}
	if err := checkOrder(&cfg); err != nil {
		return nil, err
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.RetryBase == 0 {
		cfg.RetryBase = DefaultRetryBase
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	if cfg.FetchWait == 0 {
		cfg.FetchWait = DefaultFetchWait
	}
	if cfg.AckLinger == 0 {
		cfg.AckLinger = DefaultAckLinger
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = DefaultStatusInterval
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	h, err := topology.Ensure(ctx, js, topology.Options{Replicas: cfg.Replicas, ResultTTL: cfg.ResultTTL, DuplicateWindow: cfg.DuplicateWindow})
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	host, _ := os.Hostname()
	return &Worker{
		cfg:      cfg,
		nc:       nc,
		js:       js,
		h:        h,
		log:      cfg.Logger,
		host:     host,
		pid:      os.Getpid(),
		handlers: map[string]Handler{},
		slots:    make(chan struct{}, cfg.Concurrency),
		running:  map[*run]struct{}{},
		canceled: map[string]struct{}{},
		window:   newWindow(),
	}, nil
}

// Handle registers h for tasks of type taskType, replacing any handler
// registered before. It panics if taskType is not a valid type, like
// net/http's ServeMux does for a bad pattern. Call it before Run.
func (w *Worker) Handle(taskType string, h Handler) {
	if err := forq.ValidateType(taskType); err != nil {
		panic(fmt.Sprintf("consumer: Handle: %v", err))
	}
	w.handlers[taskType] = h
}

// HandleFunc registers f for tasks of type taskType.
func (w *Worker) HandleFunc(taskType string, f func(ctx context.Context, t *Task) ([]byte, error)) {
	w.Handle(taskType, HandlerFunc(f))
}

// Types returns the registered task types, sorted.
func (w *Worker) Types() []string {
	ts := make([]string, 0, len(w.handlers))
	for t := range w.handlers {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	return ts
}

// Processed returns how many tasks this worker has finished, whatever
// their outcome.
func (w *Worker) Processed() int64 { return w.processed.Load() }

// Run pulls and runs tasks until ctx is canceled, then stops gracefully
// (see the package doc) and returns nil. It returns ErrMaxTasks after
// Config.MaxTasks tasks, and an error if a queue's consumer cannot be
// declared. Broker outages are waited out: the connection reconnects and
// fetching resumes.
func (w *Worker) Run(ctx context.Context) error {
	byQueue, cons, err := w.sources(ctx)
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	// Handlers run under hard, which outlives ctx by the grace period.
	hard, cancelHard := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelHard(nil)
	// Cancel requests are watched for as long as handlers may run; the
	// requests made before this worker started are loaded before it
	// fetches anything.
	var watcher sync.WaitGroup
	defer watcher.Wait()
	defer cancelHard(nil)
	if err := w.watchCancels(ctx, hard, &watcher); err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	w.started = time.Now().UTC()
	w.loadQueueRecord(ctx)
	if w.cfg.StatusInterval > 0 {
		watcher.Go(func() { w.publishStatus(hard) })
	}
	w.mu.Lock()
	w.stopping = nil
	w.mu.Unlock()
	// Final acks are published in batches (acker.go); the acker outlives
	// the runners, and publishes what is left when Run returns.
	w.acker = newAcker(w.nc, w.cfg.AckLinger)
	go w.acker.run()
	defer w.acker.close()
	// Handlers' contexts do not hang from hard (whose children map would
	// take an insert and a delete per task): the end of the grace cancels
	// each running handler through w.running, see stopAll.
	d := newDispatcher(w, hard)
	// One heartbeat loop for every running task.
	beatDone := make(chan struct{})
	var beater sync.WaitGroup
	defer beater.Wait()
	defer close(beatDone)
	if tick := heartbeatTick(cons); tick > 0 {
		beater.Go(func() { w.heartbeats(tick, beatDone) })
	}
	w.pullLoop(ctx, d, byQueue)
	d.close()

	// No more fetching. Let running handlers finish within the grace.
	done := make(chan struct{})
	go func() { d.runners.Wait(); close(done) }()
	if ctx.Err() != nil {
		w.log.Info("stopping: waiting for running tasks", "grace", w.cfg.Grace)
	}
	select {
	case <-done:
	case <-time.After(w.cfg.Grace):
		w.log.Warn("grace period over: canceling running tasks; they will be redelivered")
		w.stopAll(errStopping)
		cancelHard(errStopping)
		<-done
	}
	if w.cfg.MaxTasks > 0 && w.processed.Load() >= int64(w.cfg.MaxTasks) {
		return ErrMaxTasks
	}
	return nil
}

// Abort cancels every running handler's context at once; their tasks are
// naked for immediate redelivery. A stop that cannot wait (the supervisor
// died) calls it after canceling Run's context.
func (w *Worker) Abort() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for r := range w.running {
		if r.cancel != nil {
			r.cancel(errStopping)
		}
	}
}

// stopAll cancels every running handler with cause, and every handler
// that starts from now on.
func (w *Worker) stopAll(cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopping = cause
	for r := range w.running {
		if r.cancel != nil {
			r.cancel(cause)
		}
	}
}

// heartbeatTick is how often the heartbeat loop looks for tasks due one:
// a quarter of the shortest beat, so that a task's first heartbeat goes
// out between ⅓ and 5⁄12 of its ack wait. 0 means no heartbeats.
func heartbeatTick(cons []jetstream.Consumer) time.Duration {
	var tick time.Duration
	for _, c := range cons {
		if aw := c.CachedInfo().Config.AckWait; aw > 0 {
			b := beatOf(aw) / 4
			if tick == 0 || b < tick {
				tick = b
			}
		}
	}
	return tick
}

// beatOf is the interval of a task's heartbeats (in-progress acks).
func beatOf(ackWait time.Duration) time.Duration { return max(ackWait/3, 100*time.Millisecond) }

// heartbeats tells the broker every beat that each running task is still
// being worked on, until done is closed.
func (w *Worker) heartbeats(tick time.Duration, done <-chan struct{}) {
	t := time.NewTicker(tick)
	defer t.Stop()
	var due []jetstream.Msg
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			due = due[:0]
			w.mu.Lock()
			for r := range w.running {
				if r.msg != nil && r.beat > 0 && !now.Before(r.next) {
					due = append(due, r.msg)
					r.next = now.Add(r.beat)
				}
			}
			w.mu.Unlock()
			for _, m := range due {
				_ = m.InProgress()
			}
			clear(due)
		}
	}
}

// job is one delivery for a runner to process.
type job struct {
	queue   string
	prio    forq.Priority
	ackWait time.Duration
	m       jetstream.Msg
}

func (w *Worker) acquire(ctx context.Context) bool {
	select {
	case w.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (w *Worker) tryAcquire() bool {
	select {
	case w.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (w *Worker) release(n int) {
	for range n {
		<-w.slots
	}
}

func (w *Worker) unclaim(n int) {
	if w.cfg.MaxTasks > 0 && n > 0 {
		w.claimed.Add(-int64(n))
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// process runs one delivery of a task (see deliver), counted in InFlight
// while it runs and in Processed once it is over.
func (w *Worker) process(hard context.Context, r *run, queue string, prio forq.Priority, ackWait time.Duration, m jetstream.Msg) {
	// Counted around deliver, not with defers: deliver's one defer is
	// then open-coded (inline at each return), which the compiler gives
	// up on for three defers and this many returns.
	w.inflight.Add(1)
	w.deliver(hard, r, queue, prio, ackWait, m)
	w.inflight.Add(-1)
	w.processed.Add(1)
}

// deliver runs one delivery of a task to its end: handled and acked,
// retried, dead-lettered, expired or canceled.
func (w *Worker) deliver(hard context.Context, r *run, queue string, prio forq.Priority, ackWait time.Duration, m jetstream.Msg) {
	t := &Task{Queue: queue, Priority: prio, Payload: m.Data(), Header: m.Headers(), msg: m}
	// Forq-Id, when present, is the task's ID (a task fired by a schedule,
	// or retried from the dead letters, whose Nats-Msg-Id is only a
	// de-duplication key); otherwise Nats-Msg-Id is.
	t.ID = t.Header.Get(forq.HeaderTaskID)
	if t.ID == "" {
		t.ID = t.Header.Get(forq.HeaderID)
	}
	t.Type = t.Header.Get(forq.HeaderType)
	t.Attempt = 1
	if t.ID == "" {
		if md, err := m.Metadata(); err == nil {
			t.Attempt = int(md.NumDelivered)
			// Published without an ID (e.g. by hand): the stream
			// sequence is stable across redeliveries.
			t.ID = "seq-" + strconv.FormatUint(md.Sequence.Stream, 10)
		}
	} else if n, ok := numDelivered(m.Reply()); ok {
		t.Attempt = int(n)
	}
	log := &taskLog{w: w, t: t}
	record := t.Header.Get(forq.HeaderRecord) == "1" || w.recordsQueue(queue)

	var timeout time.Duration
	t.MaxAttempts = forq.DefaultMaxAttempts
	var bad error
	if s := t.Header.Get(forq.HeaderMaxAttempts); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			bad = fmt.Errorf("%w: header %s: %q is not a positive integer", ErrPermanent, forq.HeaderMaxAttempts, s)
		}
		t.MaxAttempts = max(n, 1)
	}
	if s := t.Header.Get(forq.HeaderTimeout); s != "" && bad == nil {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			bad = fmt.Errorf("%w: header %s: %q is not a positive duration like 30s", ErrPermanent, forq.HeaderTimeout, s)
		}
		timeout = d
	}
	if t.Type == "" && bad == nil {
		bad = fmt.Errorf("%w: no %s header", ErrPermanent, forq.HeaderType)
	}
	res := forq.Result{ID: t.ID, Queue: queue, Type: t.Type, Attempts: t.Attempt, WorkerPID: w.pid, Host: w.host}
	if bad != nil {
		w.fail(log, t, escape(res), bad)
		return
	}
	if key := t.Header.Get(forq.HeaderLock); key != "" && !w.isCanceled(t.ID) {
		var ok bool
		held := escape(res)
		if hard, ok = w.takeLock(hard, log, t, held, key); !ok {
			return
		}
		res = *held
		defer w.unlockTask(log, t)
	}
	if t.Attempt > t.MaxAttempts {
		w.fail(log, t, escape(res), fmt.Errorf("%w: delivered %d times but allowed %d attempts: its workers stopped while running it", ErrPermanent, t.Attempt, t.MaxAttempts))
		return
	}
	if dl, ok := deadline(t); ok && t.Attempt == 1 && time.Now().After(dl) {
		w.expire(log, t, escape(res), dl)
		return
	}

	if w.isCanceled(t.ID) {
		w.dropCanceled(log, t, escape(res))
		return
	}
	h, ok := w.handlers[t.Type]
	var out []byte
	var err error
	res.StartedAt = time.Now().UTC()
	if !ok {
		err = fmt.Errorf("%w %q on this worker (it handles %v)", ErrNoHandler, t.Type, w.Types())
	} else {
		if record {
			res.State = forq.StateRunning
			w.put(log, escape(res))
		}
		out, err = w.runHandler(hard, r, t, h, timeout, ackWait, res.StartedAt)
	}
	res.FinishedAt = time.Now().UTC()
	if err == nil {
		w.ended(log, t)
		if record {
			res.State, res.Result = forq.StateSucceeded, out
			if !w.put(log, escape(res)) {
				// Without its record a waiter would wait forever: run it again.
				_ = m.NakWithDelay(time.Second)
				return
			}
		}
		if err := m.Ack(); err != nil {
			log.get().Warn("ack failed; the task will be redelivered", "err", err)
		}
		w.observe(t, OutcomeSucceeded, &res)
		if w.log.Enabled(context.Background(), slog.LevelDebug) {
			log.get().Debug("task succeeded", "duration", res.FinishedAt.Sub(res.StartedAt))
		}
		return
	}
	res.Result = out
	if errors.Is(err, forq.ErrCanceled) {
		w.dropCanceled(log, t, escape(res))
		return
	}
	if errors.Is(err, errStopping) {
		// Stopped before it finished: redeliver at once, elsewhere.
		log.get().Info("task interrupted by shutdown; redelivering")
		if record {
			res.State, res.StartedAt, res.FinishedAt = forq.StateQueued, time.Time{}, time.Time{}
			w.put(log, escape(res))
		}
		_ = m.Nak()
		w.observe(t, OutcomeInterrupted, &res)
		return
	}
	w.fail(log, t, escape(res), err)
}

// escape returns a copy of r on the heap, for the paths that keep or
// record a task's result. Most tasks succeed without a record, and then
// process's Result stays on its stack: one allocation fewer per task.
func escape(r forq.Result) *forq.Result { return &r }

// taskLog builds a task's logger when it is first needed: most tasks
// succeed and log nothing, and slog's With allocates even when the level
// is off.
type taskLog struct {
	w *Worker
	t *Task
	l *slog.Logger
}

func (x *taskLog) get() *slog.Logger {
	if x.l == nil {
		t := x.t
		x.l = x.w.log.With("task", t.ID, "queue", t.Queue, "type", t.Type, "attempt", t.Attempt, "pid", x.w.pid)
	}
	return x.l
}

// runHandler runs h with the task's deadline, heartbeats and panic guard.
// hard is the parent of the handler's context; r is the runner's entry in
// w.running, where the task is cancelable and gets its heartbeats.
func (w *Worker) runHandler(hard context.Context, r *run, t *Task, h Handler, timeout, ackWait time.Duration, start time.Time) (out []byte, err error) {
	ctx, cancel := context.WithCancelCause(hard)
	defer cancel(nil)
	if timeout > 0 {
		var c context.CancelFunc
		ctx, c = context.WithTimeoutCause(ctx, timeout, fmt.Errorf("task timed out after %s", timeout))
		defer c()
	}
	w.mu.Lock()
	r.id, r.cancel, r.msg = t.ID, cancel, t.msg
	r.beat, r.next = 0, time.Time{}
	if ackWait > 0 {
		r.beat = beatOf(ackWait)
		r.next = start.Add(r.beat)
	}
	if w.stopping != nil {
		cancel(w.stopping)
	} else if _, ok := w.canceled[t.ID]; ok {
		cancel(forq.ErrCanceled)
	}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		r.id, r.cancel, r.msg = "", nil, nil
		w.mu.Unlock()
	}()
	defer func() {
		if p := recover(); p != nil {
			buf := make([]byte, 4096)
			buf = buf[:runtime.Stack(buf, false)]
			err = fmt.Errorf("handler panicked: %v\n%s", p, buf)
		}
	}()
	out, err = h.Handle(ctx, t)
	if err != nil && ctx.Err() != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errStopping) || errors.Is(cause, forq.ErrCanceled) {
			return nil, cause
		} else if cause != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	return out, err
}

// fail handles a failed attempt: retry after back-off, or dead-letter.
func (w *Worker) fail(log *taskLog, t *Task, res *forq.Result, err error) {
	res.Error = err.Error()
	if res.FinishedAt.IsZero() {
		res.FinishedAt = time.Now().UTC()
	}
	delay := w.backoff(t.Attempt)
	if dl, ok := deadline(t); ok && !errors.Is(err, ErrPermanent) && t.Attempt < t.MaxAttempts && time.Now().Add(delay).After(dl) {
		// The broker drops the task at its deadline: a retry would never come.
		err = fmt.Errorf("%w (not retried: its deadline %s comes before the next attempt)", err, dl.Format(time.RFC3339))
		t.MaxAttempts = t.Attempt
	}
	if !errors.Is(err, ErrPermanent) && t.Attempt < t.MaxAttempts {
		res.State = forq.StateFailed
		w.put(log, res)
		log.get().Warn("task failed; will retry", "err", err, "retry_in", delay.Round(time.Millisecond))
		if nerr := t.msg.NakWithDelay(delay); nerr != nil {
			log.get().Warn("nak failed; the task will be redelivered after the ack wait", "err", nerr)
		}
		w.observe(t, OutcomeRetried, res)
		return
	}
	if derr := w.deadLetter(t, err); derr != nil {
		// Keep the task: it is redelivered and dead-lettered again later.
		log.get().Error("dead-letter failed; the task stays queued", "err", derr)
		_ = t.msg.NakWithDelay(w.backoff(1))
		return
	}
	w.ended(log, t)
	res.State = forq.StateDead
	w.put(log, res)
	log.get().Error("task dead-lettered", "err", err, "attempts", t.Attempt)
	if aerr := t.msg.Ack(); aerr != nil {
		log.get().Warn("ack of dead-lettered task failed", "err", aerr)
	}
	w.observe(t, OutcomeDead, res)
}

func (w *Worker) deadLetter(t *Task, cause error) error {
	m := nats.NewMsg(forq.DeadSubject(t.Queue))
	m.Data = t.Payload
	for k, vs := range t.Header {
		// Nats-Schedule-Next and Nats-Scheduler (on a task a schedule
		// fired) are the broker's own: a publish carrying them is refused.
		if k == "Nats-Expected-Stream" || k == "Nats-TTL" || strings.HasPrefix(k, "Nats-Schedule") {
			continue
		}
		m.Header[k] = slices.Clone(vs)
	}
	// The dead letter's de-duplication key is this delivery's: a worker
	// that dies between publishing it and acking the task publishes the
	// same key again and the broker keeps one letter, while the same task
	// dying again later (retried, or enqueued again) gets a letter of its
	// own.
	key := t.ID
	if md, err := t.msg.Metadata(); err == nil {
		key += "/dead/" + strconv.FormatUint(md.Sequence.Stream, 10)
	}
	m.Header.Set(forq.HeaderID, key)
	m.Header.Set(forq.HeaderTaskID, t.ID)
	msg := cause.Error()
	if len(msg) > 2048 {
		msg = msg[:2048] + "…"
	}
	m.Header.Set(forq.HeaderError, sanitizeHeader(msg))
	m.Header.Set(forq.HeaderAttempts, strconv.Itoa(t.Attempt))
	m.Header.Set(forq.HeaderQueue, t.Queue)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := w.js.PublishMsg(ctx, m)
	return err
}

// sanitizeHeader keeps a header value on one line.
func sanitizeHeader(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}

func (w *Worker) backoff(attempt int) time.Duration {
	d := w.cfg.RetryBase
	for i := 1; i < attempt && d < w.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, w.cfg.RetryMax)
	return d/2 + rand.N(d/2+1)
}

// put records res; it reports whether the record was written.
func (w *Worker) put(log *taskLog, res *forq.Result) bool {
	b, err := json.Marshal(res)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = w.h.Results.Put(ctx, res.ID, b)
	}
	if err != nil {
		log.get().Warn("recording the result failed", "state", res.State, "err", err)
		return false
	}
	return true
}
