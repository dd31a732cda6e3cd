package cli

import (
	"context"
	"errors"
	"fmt"

	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/heapfloor"
	"github.com/forqhq/forq/pool"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// WorkerFlags configure a worker process; "forq pool" passes them on to
// its children.
type WorkerFlags struct {
	Queue       []string      `short:"q" default:"default" help:"Queue(s) to pull from, comma-separated. Every priority level of each is served, highest first."`
	Order       string        `default:"strict" enum:"strict,weighted" help:"With several queues, which goes first within a priority level: strict (always the earlier queue) or weighted (in proportion to --weights, the others when it is empty)."`
	Weights     []string      `placeholder:"QUEUE=N" help:"With --order weighted: the queues' weights, e.g. a=3,b=1 (1 to 1000; a queue not named weighs 1)."`
	Concurrency int           `short:"c" default:"1" help:"Tasks run at once in this process."`
	AckWait     time.Duration `default:"3s" help:"Time without an ack or heartbeat before the broker redelivers a task, when this worker creates the queue's consumer (a consumer an older forq created with its default, 30s, is moved to 3s)."`
	Grace       time.Duration `default:"10s" help:"On SIGTERM/SIGINT: how long running tasks may finish before they are canceled and redelivered."`
	RetryBase   time.Duration `default:"1s" help:"Back-off before the 2nd attempt; doubles per attempt, with jitter."`
	RetryMax    time.Duration `default:"5m" help:"Longest back-off between attempts."`
	MaxTasks    int           `default:"0" help:"Exit (code 100, so a pool replaces it) after this many tasks; 0 is no limit."`
	LockTTL     time.Duration `default:"5s" help:"How long the lock of a task with a lock key outlives a worker that died (at least 1s); a live worker refreshes it every third of this."`
	Name        string        `help:"How this worker's host is shown in forq stats, task results and lock holders (e.g. the service's name, for a container); default: the host name."`
	HeapFloor   string        `default:"16MiB" help:"Let the Go heap grow to this before garbage is collected (more if the live heap needs it, as GOGC=100 would): fewer collections for a worker of many short tasks, for this much more memory under load. 0 is Go's default; a GOGC environment variable turns it off."`

	AllowExec     bool          `help:"Run exec tasks (any command a producer names!). Off by default."`
	ExecAllow     []string      `placeholder:"PROG,..." help:"With --allow-exec: the only commands allowed, by the name or path a task gives."`
	ExecMaxOutput string        `default:"1MiB" help:"Stdout of an exec task kept as its result."`
	ExecKillGrace time.Duration `default:"5s" help:"When an exec task times out or is canceled: time between SIGTERM and SIGKILL to its process group."`

	OpsFlags `embed:""`
}

// childGrace is the grace a pool gives its workers: its own less up to a
// second, so that they finish theirs, and hand back the tasks they could
// not finish, before the pool kills them.
func childGrace(grace time.Duration) time.Duration { return grace - min(grace/5, time.Second) }

// childEnv returns the environment by which a pool passes these flags on
// to each of its workers, forq work or a command of the user's, which may
// read them too (README, "Your own worker command"): the queues and their
// order, the name, the grace (childGrace), the task limit maxTasks (0 is none) and
// the metrics port (the next one: the pool serves on the flag's, and each
// worker adds its index). childArgs passes on the others.
func (f *WorkerFlags) childEnv(maxTasks int) []string {
	env := []string{"FORQ_QUEUE=" + strings.Join(f.Queue, ","), "FORQ_GRACE=" + childGrace(f.Grace).String()}
	if maxTasks > 0 {
		env = append(env, "FORQ_MAX_TASKS="+strconv.Itoa(maxTasks))
	}
	if f.Order != "" {
		env = append(env, "FORQ_ORDER="+f.Order)
	}
	if f.Name != "" {
		env = append(env, "FORQ_NAME="+f.Name)
	}
	if len(f.Weights) > 0 {
		env = append(env, "FORQ_WEIGHTS="+strings.Join(f.Weights, ","))
	}
	if f.MetricsPort > 0 {
		env = append(env, "FORQ_METRICS_PORT="+strconv.Itoa(f.MetricsPort+1), "FORQ_METRICS_HOST="+f.MetricsHost)
	}
	return env
}

// childArgs returns the flags of forq work that pass on to a pool's forq
// work children what childEnv does not.
func (f *WorkerFlags) childArgs() []string {
	args := []string{
		"--concurrency", strconv.Itoa(f.Concurrency),
		"--ack-wait", f.AckWait.String(),
		"--retry-base", f.RetryBase.String(),
		"--retry-max", f.RetryMax.String(),
		"--lock-ttl", f.LockTTL.String(),
		"--heap-floor", f.HeapFloor,
		"--exec-max-output", f.ExecMaxOutput,
		"--exec-kill-grace", f.ExecKillGrace.String(),
	}
	if f.AllowExec {
		args = append(args, "--allow-exec")
	}
	if len(f.ExecAllow) > 0 {
		args = append(args, "--exec-allow", strings.Join(f.ExecAllow, ","))
	}
	return args
}

// WorkCmd is "forq work".
type WorkCmd struct {
	ConnFlags     `embed:""`
	TopologyFlags `embed:""`
	WorkerFlags   `embed:""`

	// Set by forq torture for the workers of its pool.
	TortureDir string `hidden:"" help:"History directory of forq torture: handle its task types."`
}

// Run runs a worker until SIGINT or SIGTERM. The flags are valid: kong
// ran their Validate methods (validate.go).
func (c *WorkCmd) Run(env *Env) (err error) {
	maxOut, err := parseBytes(c.ExecMaxOutput)
	if err != nil {
		return usageErr("--exec-max-output: %v", err)
	}
	th, err := tortureHandlers(c.TortureDir)
	if err != nil {
		return err
	}
	if th != nil {
		// The torture history this worker wrote: a failed close may have
		// lost its last events, which forq torture would miss.
		defer func() {
			if cerr := th.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("closing the torture history: %w", cerr))
			}
		}()
	}
	nc, err := c.connect("forq work "+strconv.Itoa(os.Getpid()), env.Log)
	if err != nil {
		return err
	}
	defer nc.Close()
	return runWorker(env, nc, c.WorkerFlags, c.TopologyFlags, func(w *consumer.Worker) {
		registerTorture(w, th)
		for name, b := range builtins {
			w.Handle(name, b.handler)
		}
		w.Handle(forq.TypeExec, consumer.ExecHandler(consumer.ExecConfig{
			Allow: c.AllowExec, AllowList: c.ExecAllow, MaxOutput: int(maxOut), KillGrace: c.ExecKillGrace,
			Conn: nc, // the output of a task that asks for it (forq.ExecSpec.Stream)
		}))
	})
}

// runWorker runs a worker with the handlers register adds until a signal.
// A worker whose pool supervisor died (it gets SIGTERM as its parent-death
// signal) aborts instead of draining: nobody would wait for it or replace
// it. It hands its running tasks back at once, its exec tasks' process
// groups get SIGTERM and shortly after SIGKILL, and a write to its dead
// stderr pipe fails rather than killing it (consumer.StopContext).
func runWorker(env *Env, nc *nats.Conn, f WorkerFlags, tf TopologyFlags, register func(*consumer.Worker)) error {
	floor, err := parseBytes(f.HeapFloor)
	if err != nil {
		return usageErr("--heap-floor: %v", err)
	}
	defer heapfloor.Start(uint64(floor), os.Getenv("GOGC")).Stop()
	ctx, stop := consumer.StopContext(context.Background())
	defer stop()
	reg := newRegistry()
	metrics := newWorkerMetrics(reg)
	order, weights, err := f.order()
	if err != nil {
		return err
	}
	restarts, err := poolRestarts()
	if err != nil {
		return err
	}
	w, err := consumer.New(ctx, nc, consumer.Config{
		Queues: f.Queue, Order: order, Weights: weights,
		Concurrency: f.Concurrency, AckWait: f.AckWait, Grace: f.Grace,
		LockTTL:   f.LockTTL,
		RetryBase: f.RetryBase, RetryMax: f.RetryMax, MaxTasks: f.MaxTasks,
		Name: f.Name, Restarts: restarts,
		Logger: env.Log, Replicas: tf.Replicas, ResultTTL: tf.ResultTTL, DuplicateWindow: tf.DuplicateWindow, Observer: metrics,
	})
	if err != nil {
		return err
	}
	register(w)
	metrics.setTypes(w.Types())
	// The queues' depth is the broker's to report (forq broker, forq run):
	// the same figure from every worker would add up wrong.
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "forq", Name: "tasks_in_flight", Help: "Tasks this worker is processing now."},
			func() float64 { return float64(w.InFlight()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "forq", Name: "worker_capacity", Help: "Tasks this worker runs at once at most (--concurrency)."},
			func() float64 { return float64(f.Concurrency) }),
	)
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
	running.Store(true)
	// Under a pool: this worker is ready, so its crashes from now on are
	// tasks' doing, not a failure to start (see pool.Ready).
	if err := pool.Ready(); err != nil {
		env.Log.Warn("could not tell the pool this worker is ready", "err", err)
	}
	err = w.Run(ctx)
	running.Store(false)
	// Exit pool.ExitRecycle: a pool replaces this worker at once.
	if errors.Is(err, consumer.ErrMaxTasks) {
		env.Log.Info("worker ran its maximum number of tasks; exiting to be replaced", "max_tasks", f.MaxTasks)
		return &exitError{code: pool.ExitRecycle}
	}
	if errors.Is(err, consumer.ErrAbandoned) {
		// Its abandoned handler may still run: a new process, not this one.
		if ctx.Err() != nil {
			env.Log.Warn("worker stopped, leaving behind a handler that ignored its context", "processed", w.Processed())
			return nil
		}
		env.Log.Warn("worker abandoned a handler that ignored its timeout; exiting to be replaced")
		return &exitError{code: pool.ExitRecycle}
	}
	if err != nil {
		return err
	}
	env.Log.Info("worker stopped", "processed", w.Processed())
	return nil
}

// order parses --order and --weights.
func (f *WorkerFlags) order() (consumer.Order, map[string]int, error) {
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

// poolRestarts reads how many times a pool restarted this worker's slot
// before it (pool.EnvRestarts, set by forq pool); 0 when it is not set.
func poolRestarts() (int, error) {
	v := os.Getenv(pool.EnvRestarts)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, usageErr("%s=%q: not a count (a whole number, 0 or more)", pool.EnvRestarts, v)
	}
	return n, nil
}
