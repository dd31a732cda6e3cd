package consumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/pull"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
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
	// DefaultAbandonGrace is how long a handler may run past its task's
	// timeout before it is abandoned.
	DefaultAbandonGrace = 2 * time.Second
	// DefaultAckLinger is how long a finished task's ack may wait for
	// those of other tasks still running (Config.AckLinger).
	DefaultAckLinger = time.Millisecond
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

// ErrAbandoned is returned by Run when the worker stopped because it
// abandoned a handler: one that went on running past its task's timeout
// (plus Config.AbandonGrace) although its context was canceled, or past
// the end of a stop's grace period (Config.Grace, then AbandonGrace). Its
// task was settled as timed out (retried or dead-lettered), or handed back
// at a stop, but its goroutine may still run and hold memory, locks or
// files: the process should exit and be replaced, as forq work does (exit
// code 100, which its pool replaces at once). Run returns it once the
// worker's other running tasks are done, or at the end of Config.Grace.
var ErrAbandoned = errors.New("abandoned a handler that ignored its context past its timeout")

// ErrLeaseLost is the cause of a handler's context (context.Cause) when
// its worker lost the task's lease: no heartbeat was confirmed by the
// broker for longer than the queue's ack wait (the worker was frozen, or
// cut off from the broker), so the broker may have given the task to
// another worker. The handler should stop; whatever it returns, this
// worker neither acks nor records the task: its other delivery does.
var ErrLeaseLost = errors.New("task lease lost: no heartbeat confirmed by the broker within the ack wait")

// ErrAlreadyStarted is returned by Run called on a Worker whose Run was
// called before, whether it still runs or has returned: a Worker runs
// once (make another with New to run again).
var ErrAlreadyStarted = errors.New("the worker's Run was already called: a worker runs once")

// Task is a task as a handler sees it.
type Task struct {
	// ID, Queue and Type of the task.
	ID, Queue, Type string
	// Payload as enqueued.
	Payload []byte
	// Attempt is 1 on the first run and one more after each failure of
	// the task: an error, a panic, a timeout, or the crash of a worker
	// process that ran it alone. A delivery lost otherwise (a hand-back
	// at shutdown, a supervisor's death, a crash caused by another task in
	// the same process) does not count; see attempts.go.
	Attempt int
	// MaxAttempts the task may make.
	MaxAttempts int
	// Header has the message's headers, for Forq-* headers a feature adds.
	Header nats.Header
	// Priority is the level of the queue the task came from.
	Priority forq.Priority
	// alone: a delivery of this task was lost, so it runs alone in its
	// process, its start and outcome recorded (see attempts.go). Next to
	// Priority, it takes no room of its own.
	alone bool

	msg  *pull.Msg
	lock *lockHold // the task's lock while it holds one
	rev  uint64    // revision of its record this delivery last wrote or read
	// history is the failed attempts of its message before this delivery,
	// from its record (attempts.go); nil on a first delivery.
	history []forq.Attempt
	// rn is the runner of its handler, and dl the handler's deadline if
	// the task has a timeout: what InProgress moves (progress.go).
	rn *runner
	dl *localDeadline
}

// run is the delivery of t's message (with a lock key: its run), 1 on its
// first: what attempts.go counts from. Read from the ack subject when
// needed, on the rare paths, rather than kept in every Task.
func (t *Task) run() int {
	if t.lock != nil && t.lock.runs > 0 {
		return t.lock.runs
	}
	if a, ok := wire.ParseAck(t.msg.Reply()); ok && a.Delivered > 0 && a.Delivered <= math.MaxInt32 {
		return int(a.Delivered)
	}
	return 1
}

// seq is the stream sequence of t's message, 0 if its ack subject does not
// say.
func (t *Task) seq() uint64 {
	a, _ := wire.ParseAck(t.msg.Reply())
	return a.Seq
}

// Handler runs tasks of one type. Its result bytes are recorded when the
// task asked for a record. ctx is canceled at the task's timeout (which
// Task.InProgress moves), when the task is canceled, or when the worker's
// grace period ends at shutdown.
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
	// serves every priority level of each, highest first; see order.go.
	Queues []string
	// Order chooses between Queues within a priority level: OrderStrict
	// (the default, "") or OrderWeighted.
	Order Order
	// Weights of the queues with OrderWeighted, by queue name; a queue
	// not named weighs 1.
	Weights map[string]int
	// IdlePoll bounds the long poll of an idle worker, so that it notices
	// tasks of its other levels that were not enqueued anew (redelivered,
	// or queued by a schedule) within about that time; 0 means
	// DefaultIdlePoll. A task enqueued to one of its levels ends the wait
	// at once. The long poll is also bounded by FetchWait, and by 250 ms
	// on a worker of several queues. See DefaultIdlePoll.
	IdlePoll time.Duration
	// Concurrency is how many handlers run at once in this process;
	// 0 means DefaultConcurrency.
	Concurrency int
	// AckWait of a queue's consumer when this worker is the first to
	// declare it; 0 means forq.DefaultAckWait. An existing consumer keeps
	// its own, except one declared with forq.LegacyAckWait, which a worker
	// with the default moves to it (see topology.EnsureConsumer).
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
	// Name is how this worker's host is shown: in its status (the host
	// "forq stats" lists), in its results' Host, in the holder of the
	// locks it takes and in its answers to a restarted worker. Empty
	// means the host name (os.Hostname), which in a container is its ID:
	// give the service's name there. At most MaxNameLen bytes, no control
	// characters. The worker's key in forq.BucketWorkers keeps the host
	// name, so that workers of one Name on several hosts do not share a
	// key.
	Name string
	// Restarts is how many times the pool restarted this worker's slot
	// after a crash before it (forq pool passes it in the environment as
	// FORQ_POOL_RESTARTS; see pool.EnvRestarts); 0 for a worker not run by
	// a pool. The worker only shows it, in its status's Restarts. It must
	// not be negative.
	Restarts int
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
	// worker's acks are never held. See internal/pull/acker.go.
	AckLinger time.Duration
	// AbandonGrace is how long a handler may go on past its task's
	// timeout (its context canceled) before the worker abandons it: the
	// task is settled as timed out, its slot freed, and Run returns
	// ErrAbandoned once the other running tasks are done. 0 means
	// DefaultAbandonGrace. A handler made by ExecHandler gets its
	// KillGrace plus 2s if that is longer (its command's time to stop
	// after SIGTERM); give a handler that wraps one as much.
	AbandonGrace time.Duration
}

// Worker pulls tasks and runs their handlers. Register handlers with
// Handle before Run; a Worker runs once.
type Worker struct {
	cfg      Config
	nc       *nats.Conn
	js       jetstream.JetStream
	h        *topology.Handles
	log      *slog.Logger
	host     string // the host name: of the status's key
	name     string // Config.Name, or the host name: what others are shown
	pid      int
	handlers map[string]Handler // written before Run only (Handle)

	processed atomic.Int64
	inflight  atomic.Int64
	succeeded atomic.Int64 // tasks that succeeded (WorkerStatus.Succeeded)
	// anyCanceled is set (under mu) when canceled (below) gets its first entry:
	// entries are never removed, and until there is one, isCanceled, asked
	// twice for every task, need not take mu.
	anyCanceled atomic.Bool
	// queueRecord says which queues record every task (forq.MetadataRecord).
	queueRecord atomic.Pointer[map[string]bool]
	started     time.Time
	window      *window
	locks       lockState
	guard       atomic.Pointer[restartGuard] // while Run runs; see restart.go

	mu       sync.Mutex
	ran      bool                 // Run was called: no more Handle, no second Run
	active   bool                 // Run runs its engine: Abort acts
	running  map[*runner]struct{} // one per runner goroutine
	canceled map[string]struct{}  // task IDs with a cancel request
	stopping error                // set when the grace is over: the cause for handlers
	aborted  bool                 // Abort was called during Run
	// The gate of tasks that run alone (attempts.go): handlers running
	// beside others, runs alone waiting, a run alone running, and the
	// channel closed when waiters should look again.
	shared, aloneWait int
	aloneRun          bool
	gate              chan struct{}
	abandoned         int    // handlers abandoned
	runs              uint64 // runners made, naming each in heartbeat replies
	// abandonGrace is Config.AbandonGrace, or more for an exec handler's
	// kill grace (see Run).
	abandonGrace time.Duration

	// Set by Run before its actors start.
	eng       *pull.Engine
	beatInbox string
}

// runner is a runner goroutine of the engine, and its current task,
// guarded by Worker.mu: id and cancel are set while a handler runs (""
// and nil between tasks); msg, beat and next drive its heartbeats. A
// runner keeps its entry in Worker.running for its life, so a task costs
// no map insert.
type runner struct {
	w      *Worker
	id     string
	cancel context.CancelCauseFunc
	msg    *pull.Msg
	beat   time.Duration
	next   time.Time

	// idx names the runner in the reply subjects of its heartbeats, gen
	// its task, so that a late reply is not taken for a later task's.
	idx, gen uint64
	t        *Task // while its handler runs
	// The lease: the ack wait (0: none), and the send time of the last
	// heartbeat the broker confirmed (the start until one is); lost once
	// it is older than the ack wait.
	ackWait time.Duration
	lastOK  time.Time
	lost    bool
	// Abandonment: when (zero: never), why, and, once abandoned, a channel
	// closed when its task is settled.
	started   time.Time
	abandonAt time.Time
	timedOut  error
	abandoned chan struct{}
}

// checkShown checks what others are shown of the worker: Config.Name and
// Config.Restarts.
func checkShown(cfg *Config) error {
	if err := CheckName(cfg.Name); err != nil {
		return fmt.Errorf("consumer: %w: %w", forq.ErrInvalidOption, err)
	}
	if cfg.Restarts < 0 {
		return fmt.Errorf("consumer: %w: negative restarts %d", forq.ErrInvalidOption, cfg.Restarts)
	}
	return nil
}

// MaxNameLen bounds Config.Name, as DNS bounds a host name.
const MaxNameLen = 253

// CheckName returns an error naming the problem if name cannot be a
// worker's Config.Name: longer than MaxNameLen bytes, not UTF-8, or with
// a control character (it is shown on a terminal by forq stats). The
// empty name, the host name's stand-in, is valid.
func CheckName(name string) error {
	switch {
	case len(name) > MaxNameLen:
		return fmt.Errorf("name %.20q...: longer than %d bytes", name, MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("name %q: not UTF-8", name)
	case strings.ContainsFunc(name, unicode.IsControl):
		return fmt.Errorf("name %q: has a control character", name)
	}
	return nil
}

// errStopping is the cause given to handlers canceled at the end of a stop.
var errStopping = errors.New("worker stopping: grace period over")

// New returns a Worker on nc and declares forq's streams, bucket and the
// consumers of cfg.Queues. A broker that cannot declare them now (its
// storage full, JetStream disabled) is retried, each failure logged, until
// it can or ctx ends. Errors wrap forq.ErrInvalidQueue or
// forq.ErrInvalidOption for bad config, forq.ErrServerTooOld (at once, no
// retry) for a broker older than NATS 2.11, or the broker's last error
// when ctx ended first.
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
	if err := checkShown(&cfg); err != nil {
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
	if cfg.AbandonGrace < 0 {
		return nil, fmt.Errorf("consumer: %w: negative abandon grace", forq.ErrInvalidOption)
	}
	if cfg.AbandonGrace == 0 {
		cfg.AbandonGrace = DefaultAbandonGrace
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
	h, err := topology.Retry(ctx, nc, cfg.Logger, func(ctx context.Context) (*topology.Handles, error) {
		return topology.Ensure(ctx, js, topology.Options{Replicas: cfg.Replicas, ResultTTL: cfg.ResultTTL, DuplicateWindow: cfg.DuplicateWindow, Logger: cfg.Logger})
	})
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	host, _ := os.Hostname()
	return &Worker{
		name:     cmp.Or(cfg.Name, host),
		cfg:      cfg,
		nc:       nc,
		js:       js,
		h:        h,
		log:      cfg.Logger,
		host:     host,
		pid:      os.Getpid(),
		handlers: map[string]Handler{},
		running:  map[*runner]struct{}{},
		canceled: map[string]struct{}{},
		window:   newWindow(),

		abandonGrace: cfg.AbandonGrace,
	}, nil
}

// Handle registers h for tasks of type taskType, replacing any handler
// registered before. Call it before Run: like net/http's ServeMux for a
// bad pattern, it panics if taskType is not a valid type, and if Run was
// called already (a worker's handlers are fixed once it runs).
func (w *Worker) Handle(taskType string, h Handler) {
	if err := forq.ValidateType(taskType); err != nil {
		panic(fmt.Sprintf("consumer: Handle: %v", err))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ran {
		panic(fmt.Sprintf("consumer: Handle(%q) called after Run: register handlers before Run", taskType))
	}
	w.handlers[taskType] = h
}

// HandleFunc registers f for tasks of type taskType, as Handle does (and
// panics where it does).
func (w *Worker) HandleFunc(taskType string, f func(ctx context.Context, t *Task) ([]byte, error)) {
	w.Handle(taskType, HandlerFunc(f))
}

// Types returns the registered task types, sorted. Once Run was called
// the handlers are fixed, and it is safe to call from any goroutine.
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
// Config.MaxTasks tasks, ErrAbandoned after it abandoned a handler, and an
// error if a queue's consumer cannot be declared for bad input. Broker
// outages are waited out: the connection reconnects and fetching resumes;
// a broker that cannot declare the queues' consumers (its storage full,
// JetStream disabled) is retried until it can, each failure logged. New
// waits the same way for forq's streams.
//
// A Worker runs once: Run called again, while it runs or after it
// returned, returns ErrAlreadyStarted at once.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.begin(); err != nil {
		return err
	}
	eng, err := pull.New(ctx, w.engineConfig())
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the broker
		}
		return fmt.Errorf("consumer: %w", err)
	}
	// An exec handler stops its command within its kill grace after its
	// context ends: it is not abandoned before.
	w.abandonGrace = w.cfg.AbandonGrace
	for _, h := range w.handlers {
		if x, ok := h.(*execHandler); ok {
			w.abandonGrace = max(w.abandonGrace, x.cfg.KillGrace+2*time.Second)
		}
	}
	// The actors beside the engine live until it has stopped (its
	// runners done): side is canceled then, not when ctx is.
	side, endSide := context.WithCancel(context.WithoutCancel(ctx))
	defer endSide()
	subs, err := w.subscribe(ctx, side)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: no task was taken yet
		}
		return fmt.Errorf("consumer: %w", err)
	}
	defer subs.close()
	w.started = time.Now().UTC()
	w.loadQueueRecord(ctx)
	w.mu.Lock()
	w.eng, w.active, w.stopping, w.aborted = eng, true, nil, false
	w.mu.Unlock()

	// One group: the engine, and until it has stopped, the heartbeats,
	// the cancel watcher, the status publisher, the supervisor watch and
	// the stop's grace.
	var actors sync.WaitGroup
	actors.Go(func() {
		defer endSide()
		_ = eng.Run(ctx, w.newRunner) // its one error is a second Run
	})
	if tick := heartbeatTick(eng.AckWaits()); tick > 0 {
		actors.Go(func() { w.heartbeats(side, tick) })
	}
	actors.Go(func() { w.followCancels(side, subs.cancels) })
	if w.cfg.StatusInterval > 0 {
		actors.Go(func() { w.publishStatus(side) })
	}
	if gone := SupervisorGone(ctx); gone != nil {
		actors.Go(func() { w.watchSupervisor(side, gone) })
	}
	actors.Go(func() { w.drain(ctx, side, eng) })
	actors.Wait()

	w.mu.Lock()
	w.active = false
	aborted := w.aborted
	w.mu.Unlock()
	if aborted {
		// The hand-backs must reach the broker before the process exits,
		// whatever its caller does next (the engine published its last
		// acks before it returned).
		_ = w.nc.FlushTimeout(time.Second)
	}
	if w.holdsAbandoned() {
		return ErrAbandoned
	}
	if w.cfg.MaxTasks > 0 && w.processed.Load() >= int64(w.cfg.MaxTasks) {
		return ErrMaxTasks
	}
	return nil
}

// begin marks the start of the Worker's one Run; it returns
// ErrAlreadyStarted if Run was called before.
func (w *Worker) begin() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ran {
		return ErrAlreadyStarted
	}
	w.ran = true
	return nil
}

// engineConfig is the configuration of the worker's pull engine.
func (w *Worker) engineConfig() pull.Config {
	var weights []int
	if w.cfg.Order == OrderWeighted {
		for _, q := range w.cfg.Queues {
			weights = append(weights, max(w.cfg.Weights[q], 1))
		}
	}
	return pull.Config{
		Conn: w.nc, Stream: w.h.Tasks, Queues: w.cfg.Queues, Weights: weights,
		AckWait: w.cfg.AckWait, Concurrency: w.cfg.Concurrency, MaxTasks: w.cfg.MaxTasks,
		FetchWait: w.cfg.FetchWait, IdlePoll: w.cfg.IdlePoll, AckLinger: w.cfg.AckLinger,
		Logger: w.log,
	}
}

// newRunner makes the state of one of the engine's runner goroutines.
func (w *Worker) newRunner() pull.Runner {
	r := &runner{w: w}
	w.mu.Lock()
	w.runs++
	r.idx = w.runs
	w.running[r] = struct{}{}
	w.mu.Unlock()
	return r
}

// Exit takes the runner out of Worker.running when its goroutine ends.
func (r *runner) Exit() {
	r.w.mu.Lock()
	delete(r.w.running, r)
	r.w.mu.Unlock()
}

// runSubs are the subscriptions a Run holds for its length.
type runSubs struct {
	beats   *nats.Subscription
	cancels jetstream.KeyWatcher
	guard   *restartGuard
}

// subscribe makes Run's subscriptions: the replies to heartbeats, the
// watch of cancel requests (those made before the worker started loaded
// before it fetches anything; the watch lives until side ends), and the
// restart guard.
func (w *Worker) subscribe(ctx, side context.Context) (*runSubs, error) {
	s := &runSubs{}
	// Heartbeats are sent as requests: the broker's replies confirm the
	// leases of running tasks (lease.go).
	w.beatInbox = w.nc.NewInbox()
	var err error
	if s.beats, err = w.nc.Subscribe(w.beatInbox+".>", w.beatConfirmed); err != nil {
		return nil, fmt.Errorf("subscribe to heartbeat replies: %w", err)
	}
	if s.cancels, err = w.loadCancels(ctx, side); err != nil {
		s.close()
		return nil, err
	}
	// Heartbeats on reconnect and answers to "still running?"
	// (restart.go), until every handler has returned.
	if s.guard, err = w.guardRestarts(w.cfg.Queues); err != nil {
		s.close()
		return nil, err
	}
	w.guard.Store(s.guard)
	return s, nil
}

func (s *runSubs) close() {
	if s.guard != nil {
		s.guard.stop()
	}
	if s.cancels != nil {
		_ = s.cancels.Stop()
	}
	_ = s.beats.Unsubscribe()
}

// drain is the stop's actor. Once the engine stops pulling (ctx ended,
// Abort, a handler abandoned, MaxTasks), it lets the running handlers
// finish within Config.Grace; then it cancels them (errStopping), and
// abandons those that still run, every AbandonGrace, their tasks handed
// back (lease.go), so that a stop always ends; until the engine has
// stopped (side ends).
func (w *Worker) drain(ctx, side context.Context, eng *pull.Engine) {
	select {
	case <-eng.Draining():
	case <-side.Done():
		return
	}
	w.mu.Lock()
	stopped := ctx.Err() != nil || w.aborted
	w.mu.Unlock()
	if stopped {
		w.log.Info("stopping: waiting for running tasks", "grace", w.cfg.Grace)
	} else if w.holdsAbandoned() {
		w.log.Warn("a handler was abandoned: no more fetching; exiting once the running tasks are done, to be replaced", "grace", w.cfg.Grace)
	}
	grace := time.NewTimer(w.cfg.Grace)
	defer grace.Stop()
	select {
	case <-grace.C:
	case <-side.Done():
		return
	}
	w.log.Warn("grace period over: canceling running tasks; they will be redelivered")
	w.stopAll(errStopping)
	tick := time.NewTicker(w.abandonGrace)
	defer tick.Stop()
	for {
		select {
		case now := <-tick.C:
			w.abandonRunning(now)
		case <-side.Done():
			return
		}
	}
}

// watchSupervisor aborts the worker when its supervisor dies (gone is
// closed; see StopContext), until side ends.
func (w *Worker) watchSupervisor(side context.Context, gone <-chan struct{}) {
	select {
	case <-gone:
		w.log.Warn("the worker's supervisor is gone: aborting; running tasks are handed back")
		w.Abort(ErrSupervisorGone)
	case <-side.Done():
	}
}

// Abort stops the worker at once, for a stop that cannot wait (its
// supervisor died): Run fetches no more tasks, every running handler's
// context is canceled with a cause that wraps ErrAborted and reason (if
// not nil), as is that of any handler that starts later in this Run, and
// their tasks are handed back (naked for immediate redelivery, not
// failed). Run returns once the handlers have returned (a handler that
// ignores its context still holds it up to Config.Grace), and after
// flushing the hand-backs to the broker. Run calls it itself, with reason
// ErrSupervisorGone, when its context comes from StopContext and the
// supervisor dies. Outside Run it does nothing. It is safe to call from
// any goroutine, more than once.
func (w *Worker) Abort(reason error) {
	w.mu.Lock()
	active, eng := w.active, w.eng
	if active {
		w.aborted = true
	}
	w.mu.Unlock()
	if !active {
		return
	}
	w.stopAll(&abortError{reason: reason})
	eng.Stop()
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
