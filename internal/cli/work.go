package cli

import (
	"context"
	"errors"

	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/heapfloor"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// exitRecycle is the exit code of a worker that ran --max-tasks tasks: its
// supervisor replaces it at once (pool.ExitRecycle).
const exitRecycle = 100

// WorkerFlags configure a worker process; "forq pool" passes them on to
// its children.
type WorkerFlags struct {
	Queue       []string      `short:"q" default:"default" help:"Queue(s) to pull from, comma-separated. Every priority level of each is served, highest first."`
	Order       string        `default:"strict" enum:"strict,weighted" help:"With several queues, which goes first within a priority level: strict (always the earlier queue) or weighted (in proportion to --weights, the others when it is empty)."`
	Weights     []string      `placeholder:"QUEUE=N" help:"With --order weighted: the queues' weights, e.g. a=3,b=1 (1 to 1000; a queue not named weighs 1)."`
	Concurrency int           `short:"c" default:"1" help:"Tasks run at once in this process."`
	AckWait     time.Duration `default:"30s" help:"Time without an ack or heartbeat before the broker redelivers a task, when this worker creates the queue's consumer."`
	Grace       time.Duration `default:"10s" help:"On SIGTERM/SIGINT: how long running tasks may finish before they are canceled and redelivered."`
	RetryBase   time.Duration `default:"1s" help:"Back-off before the 2nd attempt; doubles per attempt, with jitter."`
	RetryMax    time.Duration `default:"5m" help:"Longest back-off between attempts."`
	MaxTasks    int           `default:"0" help:"Exit (code 100, so a pool replaces it) after this many tasks; 0 is no limit."`
	LockTTL     time.Duration `default:"5s" help:"How long the lock of a task with a lock key outlives a worker that died (at least 1s); a live worker refreshes it every third of this."`
	HeapFloor   string        `default:"16MiB" help:"Let the Go heap grow to this before garbage is collected (more if the live heap needs it, as GOGC=100 would): fewer collections for a worker of many short tasks, for this much more memory under load. 0 is Go's default; a GOGC environment variable turns it off."`

	AllowExec     bool          `help:"Run exec tasks (any command a producer names!). Off by default."`
	ExecAllow     []string      `placeholder:"PROG,..." help:"With --allow-exec: the only commands allowed, by the name or path a task gives."`
	ExecMaxOutput string        `default:"1MiB" help:"Stdout of an exec task kept as its result."`
	ExecKillGrace time.Duration `default:"5s" help:"When an exec task times out or is canceled: time between SIGTERM and SIGKILL to its process group."`

	OpsFlags `embed:""`
}

// WorkCmd is "forq work".
type WorkCmd struct {
	ConnFlags     `embed:""`
	TopologyFlags `embed:""`
	WorkerFlags   `embed:""`
}

// Run runs a worker until SIGINT or SIGTERM.
func (c *WorkCmd) Run(env *Env) error {
	if err := validateQueues(c.Queue); err != nil {
		return err
	}
	if _, _, err := c.order(); err != nil {
		return err
	}
	if c.Concurrency < 1 {
		return usageErr("--concurrency %d: must be at least 1", c.Concurrency)
	}
	if c.MaxTasks < 0 {
		return usageErr("--max-tasks %d: must not be negative", c.MaxTasks)
	}
	if _, err := parseBytes(c.HeapFloor); err != nil {
		return usageErr("--heap-floor: %v", err)
	}
	nc, err := c.connect("forq work "+strconv.Itoa(os.Getpid()), env.Log)
	if err != nil {
		return err
	}
	defer nc.Close()
	maxOut, err := parseBytes(c.ExecMaxOutput)
	if err != nil {
		return usageErr("--exec-max-output: %v", err)
	}
	if len(c.ExecAllow) > 0 && !c.AllowExec {
		return usageErr("--exec-allow needs --allow-exec")
	}
	return runWorker(env, nc, c.WorkerFlags, c.TopologyFlags, func(w *consumer.Worker) {
		for name, b := range builtins {
			w.Handle(name, b.handler)
		}
		w.Handle(forq.TypeExec, consumer.ExecHandler(consumer.ExecConfig{
			Allow: c.AllowExec, AllowList: c.ExecAllow, MaxOutput: int(maxOut), KillGrace: c.ExecKillGrace,
		}))
	})
}

// runWorker runs a worker with the handlers register adds until a signal.
// A worker whose pool supervisor died (it gets SIGTERM as its parent-death
// signal) stops at once instead of draining: nobody would replace it.
func runWorker(env *Env, nc *nats.Conn, f WorkerFlags, tf TopologyFlags, register func(*consumer.Worker)) error {
	floor, err := parseBytes(f.HeapFloor)
	if err != nil {
		return usageErr("--heap-floor: %v", err)
	}
	defer heapfloor.Start(uint64(floor), os.Getenv("GOGC")).Stop()
	ctx, stop := signalContext()
	defer stop()
	reg := newRegistry()
	metrics := newWorkerMetrics(reg)
	order, weights, err := f.order()
	if err != nil {
		return err
	}
	w, err := consumer.New(ctx, nc, consumer.Config{
		Queues: f.Queue, Order: order, Weights: weights,
		Concurrency: f.Concurrency, AckWait: f.AckWait, Grace: f.Grace,
		LockTTL:   f.LockTTL,
		RetryBase: f.RetryBase, RetryMax: f.RetryMax, MaxTasks: f.MaxTasks,
		Logger: env.Log, Replicas: tf.Replicas, ResultTTL: tf.ResultTTL, Observer: metrics,
	})
	if err != nil {
		return err
	}
	register(w)
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	reg.MustRegister(newQueueCollector(js, f.Queue))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "forq", Name: "tasks_in_flight", Help: "Tasks this worker is processing now."},
		func() float64 { return float64(w.InFlight()) }))
	var running atomic.Bool
	ops, err := startOps(env.Log, f.MetricsHost, metricsPort(f.MetricsPort), reg, nil, func() error {
		switch {
		case !nc.IsConnected():
			return errors.New("not connected to the broker")
		case !running.Load():
			return errors.New("not running")
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer ops.stop()
	env.Log.Info("worker started", "pid", os.Getpid(), "queues", f.Queue, "concurrency", f.Concurrency, "types", w.Types())
	// Watch for the supervisor's death while running.
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	watchDone := make(chan struct{})
	runDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case <-runCtx.Done():
		case <-runDone:
			return
		}
		// The parent-death signal can arrive before this process has been
		// reparented, so keep looking while the drain goes on.
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if orphaned() {
				env.Log.Warn("the pool supervisor is gone: stopping now; running tasks are redelivered")
				w.Abort()
				return
			}
			select {
			case <-tick.C:
			case <-runDone:
				return
			}
		}
	}()
	running.Store(true)
	err = w.Run(runCtx)
	running.Store(false)
	close(runDone)
	<-watchDone
	if errors.Is(err, consumer.ErrMaxTasks) {
		env.Log.Info("worker ran its maximum number of tasks; exiting to be replaced", "max_tasks", f.MaxTasks)
		return &exitError{code: exitRecycle}
	}
	if err != nil {
		return err
	}
	env.Log.Info("worker stopped", "processed", w.Processed())
	return nil
}

// order parses --order and --weights.
func (f WorkerFlags) order() (consumer.Order, map[string]int, error) {
	o, err := consumer.ParseOrder(f.Order)
	if err != nil {
		return "", nil, usageErr("--order %q: use strict or weighted", f.Order)
	}
	if len(f.Weights) == 0 {
		return o, nil, nil
	}
	if o != consumer.OrderWeighted {
		return "", nil, usageErr("--weights needs --order weighted")
	}
	weights := map[string]int{}
	for _, kv := range f.Weights {
		q, n, ok := strings.Cut(strings.TrimSpace(kv), "=")
		w, err := strconv.Atoi(n)
		if !ok || err != nil || w < 1 || w > consumer.MaxWeight {
			return "", nil, usageErr("--weights %q: want QUEUE=N with N from 1 to %d, e.g. a=3,b=1", kv, consumer.MaxWeight)
		}
		if !slices.Contains(f.Queue, q) {
			return "", nil, usageErr("--weights %q: %q is not one of the --queue queues %v", kv, q, f.Queue)
		}
		if _, dup := weights[q]; dup {
			return "", nil, usageErr("--weights: queue %q has two weights", q)
		}
		weights[q] = w
	}
	return o, weights, nil
}

// orphaned reports whether this process was started by a pool supervisor
// that has since died.
func orphaned() bool {
	s := os.Getenv("FORQ_POOL_PID")
	if s == "" {
		return false
	}
	pid, err := strconv.Atoi(s)
	return err == nil && os.Getppid() != pid
}
