package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/pool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// PoolFlags configure the supervisor of "forq pool" and "forq run".
type PoolFlags struct {
	Workers          int           `short:"n" default:"0" help:"Worker processes, 0 to 1024; 0 is the number of CPUs."`
	MaxRestarts      int           `default:"5" help:"Restart-storm limit: more crashes than this of one worker within --restart-window stop the pool (exit 1)."`
	RestartWindow    time.Duration `default:"10s" help:"Window of the restart-storm limit."`
	MaxTasksPerChild int           `default:"0" help:"Replace a worker after it ran this many tasks; 0 is never."`
	MaxMemory        string        `default:"0" help:"Replace a worker whose resident memory passes this (e.g. 512MiB, 1GB); 0 is no limit."`
	Autoscale        string        `placeholder:"MIN-MAX" help:"Grow the pool toward MAX while the backlog grows, shrink it to MIN when idle, e.g. 1-8."`
	ScaleInterval    time.Duration `default:"1s" help:"With --autoscale or --until-empty: how often the backlog is read."`
	ScaleIdle        time.Duration `default:"5s" help:"With --autoscale: how long the queue must be idle before the pool shrinks by one worker."`
	UntilEmpty       bool          `help:"Close and join: exit once the queue is drained and every worker is done."`

	ProgressFlags `embed:""` // of draining, with --until-empty
}

// PoolCmd is "forq pool".
type PoolCmd struct {
	ConnFlags     `embed:""`
	TopologyFlags `embed:""`
	WorkerFlags   `embed:""`
	PoolFlags     `embed:""`

	Command []string `arg:"" optional:"" help:"Your worker command, after '--'. Default: 'forq work' with this pool's flags."`
}

// Run supervises the workers until SIGINT or SIGTERM.
func (c *PoolCmd) Run(env *Env) error {
	ctx, stop := signalContext()
	defer stop()
	return runPool(ctx, env, c.ConnFlags, c.TopologyFlags, c.WorkerFlags, c.PoolFlags, c.Command)
}

// maxPoolWorkers bounds --workers: more processes than this on one host is
// a typo, not a pool.
const maxPoolWorkers = 1024

// runPool runs a pool of workers, forq's own or the user's command.
func runPool(ctx context.Context, env *Env, cf ConnFlags, tf TopologyFlags, wf WorkerFlags, pf PoolFlags, command []string) error {
	if len(command) > 0 && command[0] == "--" {
		command = command[1:]
	}
	if err := validateQueues(wf.Queue); err != nil {
		return err
	}
	if _, _, err := wf.order(); err != nil {
		return err
	}
	// A negative count used to mean the CPU count, and a huge one forked
	// until the process limit and crashed the pool (issue 14, point 9).
	if pf.Workers < 0 || pf.Workers > maxPoolWorkers {
		return usageErr("--workers %d: must be 0 (the number of CPUs) to %d", pf.Workers, maxPoolWorkers)
	}
	cfg := pool.Config{
		Size:          pf.Workers,
		Grace:         wf.Grace,
		MaxRestarts:   pf.MaxRestarts,
		RestartWindow: pf.RestartWindow,
		ScaleInterval: pf.ScaleInterval,
		IdleTimeout:   pf.ScaleIdle,
		UntilEmpty:    pf.UntilEmpty,
		Stdout:        env.Stdout,
		Stderr:        env.Stderr,
		Logger:        env.Log,
		// With JSON logs each line of a child becomes a JSON record of the
		// pool's (child, pid, stream), not a prefixed line.
		StructuredOutput: logFormat(env.Log) == "json",
	}
	if cfg.Size <= 0 {
		cfg.Size = runtime.NumCPU()
	}
	if wf.Grace <= 0 {
		return usageErr("--grace %s: must be positive", wf.Grace)
	}
	mem, err := parseBytes(pf.MaxMemory)
	if err != nil {
		return usageErr("--max-memory: %v", err)
	}
	cfg.MaxRSS = mem
	if _, err := parseBytes(wf.HeapFloor); err != nil {
		return usageErr("--heap-floor: %v", err)
	}
	if pf.Autoscale != "" {
		lo, hi, ok := strings.Cut(pf.Autoscale, "-")
		cfg.Min, _ = strconv.Atoi(lo)
		cfg.Max, _ = strconv.Atoi(hi)
		if !ok || cfg.Min < 1 || cfg.Max < cfg.Min {
			return usageErr("--autoscale %q: want MIN-MAX with 1 ≤ MIN ≤ MAX, e.g. 1-8", pf.Autoscale)
		}
		cfg.Size = cfg.Min
	}
	if pf.MaxTasksPerChild < 0 {
		return usageErr("--max-tasks-per-child %d: must not be negative", pf.MaxTasksPerChild)
	}
	// Children finish their grace a little before the pool kills them, so
	// that they can hand back the tasks they could not finish.
	childGrace := wf.Grace - min(wf.Grace/5, time.Second)
	maxTasks := wf.MaxTasks
	if pf.MaxTasksPerChild > 0 {
		maxTasks = pf.MaxTasksPerChild
	}
	// Secrets go through the environment, not argv (visible in ps).
	cfg.Env = []string{"FORQ_URL=" + cf.URL, "FORQ_QUEUE=" + strings.Join(wf.Queue, ","), "FORQ_GRACE=" + childGrace.String()}
	if cf.Token != "" {
		cfg.Env = append(cfg.Env, "FORQ_TOKEN="+cf.Token)
	}
	if cf.User != "" {
		cfg.Env = append(cfg.Env, "FORQ_USER="+cf.User, "FORQ_PASSWORD="+cf.Password)
	}
	if maxTasks > 0 {
		cfg.Env = append(cfg.Env, "FORQ_MAX_TASKS="+strconv.Itoa(maxTasks))
	}
	// The order between queues, like the queues, goes by the environment,
	// so that a worker command of the user's can read it too.
	if wf.Order != "" {
		cfg.Env = append(cfg.Env, "FORQ_ORDER="+wf.Order)
	}
	if len(wf.Weights) > 0 {
		cfg.Env = append(cfg.Env, "FORQ_WEIGHTS="+strings.Join(wf.Weights, ","))
	}
	if wf.MetricsPort > 0 {
		// The pool serves on the port; child i on port + 1 + i.
		cfg.Env = append(cfg.Env, "FORQ_METRICS_PORT="+strconv.Itoa(wf.MetricsPort+1), "FORQ_METRICS_HOST="+wf.MetricsHost)
	}
	if len(command) > 0 {
		cfg.Command = command
	} else {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		cfg.Command = []string{exe,
			"--log-format", logFormat(env.Log), "--log-level", logLevel(env.Log),
			"work",
			"--concurrency", strconv.Itoa(wf.Concurrency),
			"--ack-wait", wf.AckWait.String(),
			"--retry-base", wf.RetryBase.String(),
			"--retry-max", wf.RetryMax.String(),
			"--lock-ttl", wf.LockTTL.String(),
			"--heap-floor", wf.HeapFloor,
			"--replicas", strconv.Itoa(tf.Replicas),
			"--result-ttl", tf.ResultTTL.String(),
			"--connect-timeout", cf.ConnectTimeout.String(),
			"--exec-max-output", wf.ExecMaxOutput,
			"--exec-kill-grace", wf.ExecKillGrace.String(),
		}
		if wf.AllowExec {
			cfg.Command = append(cfg.Command, "--allow-exec")
		}
		if len(wf.ExecAllow) > 0 {
			cfg.Command = append(cfg.Command, "--exec-allow", strings.Join(wf.ExecAllow, ","))
		}
		// The children share the CPUs, as the processes of a Python
		// pool do: each gets its part as GOMAXPROCS, unless the user set
		// one.
		if os.Getenv("GOMAXPROCS") == "" {
			most := cfg.Size
			if cfg.Max > 0 {
				most = cfg.Max
			}
			cfg.Env = append(cfg.Env, "GOMAXPROCS="+strconv.Itoa(pool.CPUShare(most)))
		}
	}
	// The pool reads the backlog itself when it scales or closes; forq's
	// own workers need the broker too, so check it is there before
	// forking anything.
	if cfg.Max > 0 || cfg.UntilEmpty || len(command) == 0 {
		nc, err := cf.connect("forq pool", env.Log)
		if err != nil {
			return err
		}
		defer nc.Close()
		backlog, err := queueBacklog(ctx, nc, wf.Queue, wf.AckWait, tf)
		if err != nil {
			return err
		}
		cfg.Backlog = backlog
	} else {
		cfg.Backlog = nil
	}
	if cfg.Max == 0 && !cfg.UntilEmpty {
		cfg.Backlog = nil
	}
	var prog *progress
	if cfg.UntilEmpty && cfg.Backlog != nil {
		// The backlog falling to 0, read as often as the pool reads it.
		if prog, cfg.Backlog, err = drainProgress(ctx, pf.ProgressFlags, env.Stderr, cfg.Backlog); err != nil {
			return err
		}
		defer prog.Finish()
		if prog.isBar() {
			// Output lines clear the bar; it is redrawn under them.
			cfg.Stderr = prog.Writer(cfg.Stderr)
			if isTerminal(env.Stdout) {
				cfg.Stdout = prog.Writer(cfg.Stdout)
			}
			cfg.Logger = newLogger(prog.Writer(env.Stderr), logFormat(env.Log), logLevel(env.Log))
		}
	}
	sup, err := pool.New(cfg)
	if err != nil {
		return usageErr("%v", err)
	}
	reg := newRegistry()
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "forq", Name: "pool_children", Help: "Worker processes running in the pool."},
			func() float64 { return float64(len(sup.Children())) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "forq", Name: "pool_child_restarts_total", Help: "Worker processes restarted after crashing."},
			func() float64 { return float64(sup.Restarts()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "forq", Name: "pool_child_recycles_total", Help: "Worker processes replaced after --max-tasks-per-child or --max-memory."},
			func() float64 { return float64(sup.Recycles()) }),
	)
	want := cfg.Size
	if cfg.Max > 0 {
		want = cfg.Min
	}
	ops, err := startOps(env.Log, wf.MetricsHost, wf.MetricsPort, reg, nil, func() error {
		if n := len(sup.Children()); n < want {
			return fmt.Errorf("%d of %d workers running", n, want)
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer ops.stop()
	err = sup.Run(ctx)
	prog.Finish()
	switch {
	case err == nil:
		env.Log.Info("pool stopped: every worker done")
		return nil
	case errors.Is(err, pool.ErrRestartStorm):
		return fmt.Errorf("%w; fix the worker (its output is above) or raise --max-restarts/--restart-window", err)
	default:
		return err
	}
}

// queueBacklog declares the queues' consumers and returns a function that
// reads their backlog: tasks waiting plus tasks in flight.
func queueBacklog(ctx context.Context, nc *nats.Conn, queues []string, ackWait time.Duration, tf TopologyFlags) (func(context.Context) (int64, error), error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	h, err := topology.Ensure(ctx, js, topology.Options{Replicas: tf.Replicas, ResultTTL: tf.ResultTTL})
	if err != nil {
		return nil, err
	}
	// Every priority level of each queue (see forq.Priority).
	var cons []jetstream.Consumer
	for _, q := range queues {
		for _, p := range forq.Priorities {
			c, err := topology.EnsureLevelConsumer(ctx, h.Tasks, q, p, ackWait)
			if err != nil {
				return nil, err
			}
			cons = append(cons, c)
		}
	}
	return func(ctx context.Context) (int64, error) {
		var n int64
		for _, c := range cons {
			info, err := c.Info(ctx)
			if err != nil {
				return 0, err
			}
			n += int64(info.NumPending) + int64(info.NumAckPending)
		}
		return n, nil
	}, nil
}

// parseBytes parses "0", "1048576", "512MiB", "1GB", "64k".
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q is not a size like 512MiB or 1GB", s)
	}
	mult := map[string]float64{"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1 << 10, "m": 1e6, "mb": 1e6, "mib": 1 << 20, "g": 1e9, "gb": 1e9, "gib": 1 << 30}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("%q: unknown unit %q (use B, KB, KiB, MB, MiB, GB, GiB)", s, unit)
	}
	return int64(f * mult), nil
}

func logFormat(l *slog.Logger) string {
	if _, ok := l.Handler().(*slog.JSONHandler); ok {
		return "json"
	}
	return "text"
}

func logLevel(l *slog.Logger) string {
	for _, lv := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if l.Enabled(context.Background(), lv) {
			return strings.ToLower(lv.String())
		}
	}
	return "error"
}
