package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/sleep"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/pool"
	"github.com/nats-io/nats.go/jetstream"
)

// Many queues: --queues N.
//
// N worker processes, each serving a queue of its own (worker i queue
// QueueName(i)), and a producer spreading the tasks over the N queues,
// end to end; then the pool sits idle and the broker's CPU is measured.
// The baseline has the same layout on its stream: N consumers, each
// filtered on a subject of its own, one worker process each.

// QueuePattern is the queue a worker of the many-queue pool serves: %i is
// its index in the pool (pool.EnvIndex).
const QueuePattern = "bench-q%i"

// QueueName returns the queue of worker i of the many-queue pool.
func QueueName(i int) string { return strings.ReplaceAll(QueuePattern, "%i", strconv.Itoa(i)) }

// baselineQueue returns the baseline's consumer and subject for queue q;
// "" is the main queue's.
func baselineQueue(q string) (consumer, subject string) {
	if q == "" {
		return BaselineConsumer, BaselineSubject
	}
	return q, BaselineSubject + "." + q
}

// QueuesFigures are the measurements of the many-queue pool.
type QueuesFigures struct {
	// Queues is how many queues, and worker processes, there were.
	Queues int `json:"queues"`
	// E2EPerSec is end to end over the queues: first publish → every
	// queue's consumer reports all its tasks acked.
	E2EPerSec float64 `json:"e2e_per_sec"`
	// OneQueueE2EPerSec is the main pool's end to end on one queue, and
	// E2ERatio E2EPerSec ÷ OneQueueE2EPerSec.
	OneQueueE2EPerSec float64 `json:"one_queue_e2e_per_sec"`
	E2ERatio          float64 `json:"e2e_ratio"`
	// IdleBrokerCPUPct is the broker's CPU time (the bench process's,
	// embedded broker only) while the pool sits idle, in percent of one
	// CPU; IdleWorkersCPUPct that of all the workers together.
	IdleBrokerCPUPct  float64 `json:"idle_broker_cpu_pct,omitempty"`
	IdleWorkersCPUPct float64 `json:"idle_workers_cpu_pct"`
	// IdleSeconds is how long the idle CPU was measured over.
	IdleSeconds   float64 `json:"idle_seconds"`
	PoolStartupMs float64 `json:"pool_startup_ms"`
	WorkerRSSMB   float64 `json:"worker_rss_mb"`
}

// manyQueues measures the many-queue pool of mode; oneQueue is the main
// pool's end to end on one queue.
func (r *runner) manyQueues(ctx context.Context, mode string, oneQueue float64) (*QueuesFigures, error) {
	n := r.o.Queues
	r.o.Log.Info("bench: many queues", "mode", mode, "queues", n)
	cs, err := r.setupQueues(ctx, mode, n)
	defer r.teardownQueues(mode, n)
	if err != nil {
		return nil, err
	}
	p, err := r.startQueuesPool(ctx, mode, cs)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	q := &QueuesFigures{Queues: n, OneQueueE2EPerSec: oneQueue, PoolStartupMs: ms(p.startup)}
	time.Sleep(200 * time.Millisecond)
	q.WorkerRSSMB = p.rss()

	// Idle first (a pool that struggled under load would leave its
	// redeliveries in the figure): let the workers' start-up settle,
	// then count the CPU time.
	if err := sleep.For(ctx, time.Second); err != nil {
		return nil, err
	}
	idle := r.o.IdleTime
	if idle <= 0 {
		idle = DefaultIdleTime
	}
	broker0, _ := cpuTimes()
	workers0 := p.cpu()
	t0 := time.Now()
	if err := sleep.For(ctx, idle); err != nil {
		return nil, err
	}
	broker1, _ := cpuTimes()
	workers1 := p.cpu()
	el := time.Since(t0)
	q.IdleSeconds = round(el.Seconds(), 2)
	q.IdleWorkersCPUPct = round(float64(workers1-workers0)/float64(el)*100, 3)
	if r.o.EmbeddedBroker {
		q.IdleBrokerCPUPct = round(float64(broker1-broker0)/float64(el)*100, 3)
	}
	r.o.Log.Info("bench: many queues idle", "mode", mode, "queues", n, "broker_cpu_pct", q.IdleBrokerCPUPct, "workers_cpu_pct", q.IdleWorkersCPUPct)
	res, err := r.produceQueues(ctx, mode, n)
	if err != nil {
		return nil, err
	}
	if err := r.allDrained(ctx, mode); err != nil {
		return nil, err
	}
	q.E2EPerSec = float64(r.o.Tasks) / time.Since(time.Unix(0, res.StartNs)).Seconds()
	if oneQueue > 0 {
		q.E2ERatio = round(q.E2EPerSec/oneQueue, 3)
	}
	return q, nil
}

// DefaultIdleTime is how long the idle CPU of the many-queue pool is
// measured over by default.
const DefaultIdleTime = 5 * time.Second

// setupQueues declares n empty queues of mode (their normal level, for
// forq: the workers declare the others as they start) and returns their
// consumers.
func (r *runner) setupQueues(ctx context.Context, mode string, n int) ([]jetstream.Consumer, error) {
	cs := make([]jetstream.Consumer, n)
	if mode == ModeForq {
		h, err := topology.Ensure(ctx, r.js, topology.Options{DuplicateWindow: r.o.DuplicateWindow})
		if err != nil {
			return nil, err
		}
		for i := range cs {
			q := QueueName(i)
			for _, p := range forq.Priorities {
				_ = r.js.DeleteConsumer(ctx, forq.StreamTasks, wire.LevelConsumerName(q, p))
			}
			if err := h.Tasks.Purge(ctx, jetstream.WithPurgeSubject(wire.TaskSubject(q))); err != nil {
				return nil, fmt.Errorf("purge %s: %w", wire.TaskSubject(q), err)
			}
			if cs[i], err = topology.EnsureConsumer(ctx, r.js.Conn(), h.Tasks, q, 0); err != nil {
				return nil, err
			}
		}
		return cs, nil
	}
	// The baseline's stream is the main pool's, whose subjects cover
	// these queues' (see setup).
	s, err := r.js.Stream(ctx, BaselineStream)
	if err != nil {
		return nil, err
	}
	for i := range cs {
		name, subject := baselineQueue(QueueName(i))
		if cs[i], err = s.CreateConsumer(ctx, baselineConsumerConfig(name, subject)); err != nil {
			return nil, fmt.Errorf("create consumer %s: %w", name, err)
		}
	}
	return cs, nil
}

// baselineConsumerConfig is the baseline's consumer name on subject: the
// same configuration as forq's queues.
func baselineConsumerConfig(name, subject string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       name,
		FilterSubject: subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       forq.DefaultAckWait,
		MaxDeliver:    -1,
		MaxAckPending: 100_000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// teardownQueues removes the consumers of the n queues of mode, and their
// tasks. The baseline's go with its stream (teardown).
func (r *runner) teardownQueues(mode string, n int) {
	if mode != ModeForq {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, serr := r.js.Stream(ctx, forq.StreamTasks)
	for i := range n {
		q := QueueName(i)
		for _, p := range forq.Priorities {
			_ = r.js.DeleteConsumer(ctx, forq.StreamTasks, wire.LevelConsumerName(q, p))
		}
		if serr == nil {
			_ = s.Purge(ctx, jetstream.WithPurgeSubject(wire.TaskSubject(q)+".>"))
			_ = s.Purge(ctx, jetstream.WithPurgeSubject(wire.TaskSubject(q)))
		}
	}
}

// startQueuesPool starts one worker per consumer of cs, worker i serving
// queue QueueName(i), and waits until each has a pull request waiting at
// the broker.
func (r *runner) startQueuesPool(ctx context.Context, mode string, cs []jetstream.Consumer) (*workerPool, error) {
	n := len(cs)
	args := append(slices.Clone(r.o.Command), "bench-worker", "--mode", mode, "--url", r.o.URL,
		"--concurrency", strconv.Itoa(r.o.Concurrency), "--queue", QueuePattern)
	sup, err := pool.New(pool.Config{
		Size: n, Command: args, Grace: 10 * time.Second, MaxRestarts: 1,
		Stdout: r.o.Stderr, Stderr: r.o.Stderr, Env: workerEnv(mode, n, r.o.BaselineCPUShare, os.Getenv("GOMAXPROCS")),
	})
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithCancel(ctx)
	p := &workerPool{sup: sup, cancel: cancel, done: make(chan error, 1)}
	t0 := time.Now()
	go func() { p.done <- sup.Run(pctx) }()
	deadline := time.Now().Add(2 * time.Minute)
	waiting := slices.Clone(cs)
	for {
		// The consumers with a pull waiting stay ready until a task
		// comes: each is asked until it is.
		waiting = slices.DeleteFunc(waiting, func(c jetstream.Consumer) bool {
			i, err := c.Info(ctx)
			return err == nil && i.NumWaiting >= 1
		})
		if len(waiting) == 0 {
			p.startup = time.Since(t0)
			return p, nil
		}
		select {
		case err := <-p.done:
			p.stopped = true
			return nil, fmt.Errorf("worker pool stopped while starting: %v", err)
		default:
		}
		if time.Now().After(deadline) || sleep.For(ctx, 5*time.Millisecond) != nil {
			p.stop()
			return nil, fmt.Errorf("%d of %d workers not ready after 2 minutes", len(waiting), n)
		}
	}
}

// allDrained waits until the many-queue pool of mode has no task left in
// its stream: a work-queue stream removes a task once it is acked. One
// request per check, whatever the number of queues (asking each queue's
// consumer would load the broker with as many).
func (r *runner) allDrained(ctx context.Context, mode string) error {
	stream, filter, prefix := BaselineStream, BaselineSubject+".>", BaselineSubject+"."
	if mode == ModeForq {
		stream, filter, prefix = forq.StreamTasks, forq.SubjectTasksPrefix+">", wire.TaskSubject(strings.TrimSuffix(QueuePattern, "%i"))
	}
	s, err := r.js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		left := -1
		if i, err := s.Info(ctx, jetstream.WithSubjectFilter(filter)); err == nil {
			left = 0
			for subject, n := range i.State.Subjects {
				if strings.HasPrefix(subject, prefix) {
					left += int(n)
				}
			}
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d tasks of the queues not done after 5 minutes", left)
		}
		if err := sleep.For(ctx, 2*time.Millisecond); err != nil {
			return err
		}
	}
}

// produceQueues runs a producer process spreading the tasks over n queues,
// end to end.
func (r *runner) produceQueues(ctx context.Context, mode string, n int) (*ProducerResult, error) {
	return r.produceArgs(ctx, mode, PhaseE2E, n, "--queues", strconv.Itoa(n))
}

// bestQueues combines the many-queue figures of two rounds: the higher
// throughput, the lower CPU, memory and start-up time.
func bestQueues(a, b *QueuesFigures) *QueuesFigures {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	a.E2EPerSec = max(a.E2EPerSec, b.E2EPerSec)
	a.OneQueueE2EPerSec = max(a.OneQueueE2EPerSec, b.OneQueueE2EPerSec)
	if a.OneQueueE2EPerSec > 0 {
		a.E2ERatio = round(a.E2EPerSec/a.OneQueueE2EPerSec, 3)
	}
	a.IdleBrokerCPUPct = min(a.IdleBrokerCPUPct, b.IdleBrokerCPUPct)
	a.IdleWorkersCPUPct = min(a.IdleWorkersCPUPct, b.IdleWorkersCPUPct)
	a.PoolStartupMs = min(a.PoolStartupMs, b.PoolStartupMs)
	a.WorkerRSSMB = min(a.WorkerRSSMB, b.WorkerRSSMB)
	return a
}

// queuesRows writes the many-queue figures of forq (f) and the baseline
// (b, nil without one) with row.
func queuesRows(f, b *QueuesFigures, row func(name string, f, b float64, digits int)) {
	if f == nil {
		return
	}
	if b == nil {
		b = &QueuesFigures{}
	}
	n := f.Queues
	row(fmt.Sprintf("Q=%d: end to end (tasks/s)", n), f.E2EPerSec, b.E2EPerSec, 0)
	row(fmt.Sprintf("Q=%d: ÷ one queue's end to end", n), f.E2ERatio, b.E2ERatio, 2)
	row(fmt.Sprintf("Q=%d: pool start-up (ms)", n), f.PoolStartupMs, b.PoolStartupMs, 1)
	row(fmt.Sprintf("Q=%d: worker RSS, idle (MiB)", n), f.WorkerRSSMB, b.WorkerRSSMB, 1)
	if f.IdleBrokerCPUPct > 0 {
		row(fmt.Sprintf("Q=%d: idle, broker CPU (%% of a CPU)", n), f.IdleBrokerCPUPct, b.IdleBrokerCPUPct, 2)
	}
	row(fmt.Sprintf("Q=%d: idle, workers' CPU (%% of a CPU)", n), f.IdleWorkersCPUPct, b.IdleWorkersCPUPct, 2)
}
