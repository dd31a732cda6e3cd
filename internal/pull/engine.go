package pull

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Config configures an Engine. Every field is required but Weights,
// MaxTasks and AckLinger: the worker that makes an engine (package
// consumer) validates its own configuration and fills in the defaults.
type Config struct {
	// Conn is the connection the engine pulls and acknowledges on.
	Conn *nats.Conn
	// Stream is forq.StreamTasks, on which the sources are declared.
	Stream jetstream.Stream
	// Queues to pull from, in their strict order.
	Queues []string
	// Weights of Queues, one per queue, for the weighted order; nil
	// keeps the strict order. See scheduler.go.
	Weights []int
	// AckWait of the sources the engine is the first to declare; 0 means
	// forq.DefaultAckWait (see topology.EnsureLevelConsumer).
	AckWait time.Duration
	// Concurrency is how many tasks may be held at once: slots.
	Concurrency int
	// MaxTasks stops pulling after this many tasks were taken (those
	// given back with Unclaim not counted); 0 means no limit.
	MaxTasks int
	// FetchWait bounds one pull request's wait at the broker, IdlePoll
	// the long poll of an idle engine with several sources.
	FetchWait, IdlePoll time.Duration
	// AckLinger is how long a final ack may wait for those of other tasks
	// still running; <= 0 sends each at once. See acker.go.
	AckLinger time.Duration
	// Logger gets the engine's events.
	Logger *slog.Logger
}

// Delivery is one delivered task, as the engine hands it to a Runner.
type Delivery struct {
	// Queue and Priority are the queue and level of the source it came
	// from.
	Queue    string
	Priority forq.Priority
	// AckWait is the ack wait of that source's consumer: how long the
	// task's lease lasts without a heartbeat.
	AckWait time.Duration
	// Msg is the message, through which the task is acknowledged.
	Msg *Msg
	// Received is when the engine took the message from its subscription:
	// the broker's ack wait for it started no later. A delivery that waits
	// for a runner past its ack wait (a starved process) may have been
	// given to another worker meanwhile.
	Received time.Time
}

// Runner runs deliveries on one runner goroutine of the engine, one at a
// time. The engine makes one per goroutine (Run's newRunner) and keeps it
// for the goroutine's life.
type Runner interface {
	// Deliver runs d to its end. The task's slot is freed when it
	// returns. It reports whether d was given up with Engine.Abandon
	// meanwhile: then the slot was freed already, and the runner's
	// goroutine ends.
	Deliver(ctx context.Context, d Delivery) (abandoned bool)
	// Exit is called when the runner's goroutine ends.
	Exit()
}

// Engine pulls tasks from the sources of its queues and runs them on its
// runners; see the package doc. Make one with New, then call Run once.
type Engine struct {
	cfg     Config
	byQueue [][]source
	slots   chan struct{}
	claimed atomic.Int64 // tasks pulled toward MaxTasks
	acker   *Acker
	disp    *dispatcher
	// draining is closed when the engine stops pulling.
	draining chan struct{}
	// poke wakes an idle long poll: a task was published to a source
	// that was skipped (see hints.go, interrupt.go).
	poke chan struct{}
	// reconnects is the connection's count of reconnections when the
	// sources were last known watched without a gap (see useAll).
	reconnects uint64
	// schedules are the subscriptions of watchSchedules, ended by Run.
	schedules []*nats.Subscription
	// settling counts the settlements of abandoned deliveries.
	settling sync.WaitGroup

	mu      sync.Mutex
	ran     bool
	stopped bool               // Stop was called
	cancel  context.CancelFunc // while Run runs: ends its pulling
}

// ErrRan is returned by Run called a second time.
var ErrRan = errors.New("pull: engine already ran")

// New returns an engine with the sources of cfg.Queues declared: the
// consumer of each priority level of each queue, retried (each failure
// logged) until the broker takes it or ctx ends. Its error is the broker's
// last, or one wrapping forq.ErrInvalidQueue for a bad queue name.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if len(cfg.Queues) == 0 || cfg.Concurrency < 1 {
		return nil, fmt.Errorf("pull: %w: no queues, or concurrency %d", forq.ErrInvalidOption, cfg.Concurrency)
	}
	if cfg.Weights != nil && len(cfg.Weights) != len(cfg.Queues) {
		return nil, fmt.Errorf("pull: %w: %d weights for %d queues", forq.ErrInvalidOption, len(cfg.Weights), len(cfg.Queues))
	}
	poke := make(chan struct{}, 1)
	reconnects := cfg.Conn.Stats().Reconnects
	used := map[string]*atomic.Bool{}
	for _, q := range cfg.Queues {
		for _, p := range forq.Priorities {
			if p != forq.PriorityNormal {
				used[wire.LevelSubject(q, p)] = new(atomic.Bool)
			}
		}
	}
	schedules, err := watchSchedules(ctx, &cfg, used)
	if err != nil {
		return nil, err
	}
	byQueue, err := declare(ctx, &cfg, poke, used)
	if err != nil {
		unsubscribeAll(schedules)
		return nil, err
	}
	e := &Engine{
		cfg:        cfg,
		byQueue:    byQueue,
		slots:      make(chan struct{}, cfg.Concurrency),
		acker:      NewAcker(cfg.Conn, cfg.AckLinger),
		draining:   make(chan struct{}),
		poke:       poke,
		reconnects: reconnects,
		schedules:  schedules,
	}
	e.disp = newDispatcher(e)
	return e, nil
}

// AckWaits returns the ack wait of every source, as its consumer has it.
func (e *Engine) AckWaits() []time.Duration {
	var out []time.Duration
	for _, q := range e.byQueue {
		for i := range q {
			out = append(out, q[i].ackWait) // set by New; Run writes other fields
		}
	}
	return out
}

// Run pulls tasks and hands each to a runner, until ctx ends, Stop is
// called, a delivery is abandoned or the engine took Config.MaxTasks
// tasks. Then it stops pulling (Draining is closed), lets the runners
// finish the tasks they hold, waits for the settlements of abandoned
// deliveries, publishes the acks still queued and returns. newRunner makes
// the Runner of each runner goroutine; deliveries run under ctx's values,
// not its cancellation (a stop lets the running tasks finish: ending them
// is the caller's). It returns ErrRan if the engine ran before.
func (e *Engine) Run(ctx context.Context, newRunner func() Runner) error {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e.mu.Lock()
	if e.ran {
		e.mu.Unlock()
		return ErrRan
	}
	e.ran, e.cancel = true, cancel
	if e.stopped {
		cancel()
	}
	e.mu.Unlock()

	var acks sync.WaitGroup
	acks.Go(e.acker.Run)
	e.disp.newRunner, e.disp.base = newRunner, context.WithoutCancel(ctx)
	e.pullLoop(pctx)
	unsubscribeAll(e.schedules)
	close(e.draining)
	e.disp.close()
	e.disp.runners.Wait()
	e.settling.Wait()
	// The acker outlives the runners and the settlements, and publishes
	// what is left.
	e.acker.Close()
	acks.Wait()
	return nil
}

// Stop ends Run's pulling: the tasks held run on. It may be called from
// any goroutine, more than once, before or during Run.
func (e *Engine) Stop() {
	e.mu.Lock()
	e.stopped = true
	cancel := e.cancel
	e.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// Draining returns a channel closed when Run has stopped pulling.
func (e *Engine) Draining() <-chan struct{} { return e.draining }

// Abandon gives up on a delivery whose Runner.Deliver does not return (a
// handler that ignores its context): its runner is counted out, so that
// another may take its place, its slot is freed, pulling stops (as Stop),
// and settle, which acknowledges the task in its stead, runs on a
// goroutine of the engine that Run waits for. That Deliver must report
// abandoned when (if) it returns, and leave the task alone. Call it once
// per abandoned delivery, while Run runs.
func (e *Engine) Abandon(settle func()) {
	// Counted before the runner is counted out, so that Run, waiting for
	// the runners, waits for the settlement too.
	e.settling.Go(settle)
	e.disp.abandoned()
	e.release(1)
	e.Stop()
}

// Unclaim gives back n tasks counted toward Config.MaxTasks: tasks taken
// but not run (e.g. handed back to wait for their lock).
func (e *Engine) Unclaim(n int) {
	if e.cfg.MaxTasks > 0 && n > 0 {
		e.claimed.Add(-int64(n))
	}
}

func (e *Engine) acquire(ctx context.Context) bool {
	select {
	case e.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (e *Engine) tryAcquire() bool {
	select {
	case e.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (e *Engine) release(n int) {
	for range n {
		<-e.slots
	}
}
