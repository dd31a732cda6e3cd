package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
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
	MaxRestarts      int           `default:"5" help:"Restart-storm limit: more failures to start than this of one worker in a row (exits before it is ready) within --restart-window stop the pool (exit 1). Crashes of a ready worker never do."`
	RestartWindow    time.Duration `default:"10s" help:"Window of the restart-storm limit."`
	ReadyTimeout     time.Duration `default:"10s" help:"A worker that neither tells the pool it is ready (forq work does once it runs; see FORQ_READY_FD) nor exits within this is deemed ready."`
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

// autoscale parses --autoscale: min and max are 0 without it.
func (f *PoolFlags) autoscale() (lo, hi int, err error) {
	if f.Autoscale == "" {
		return 0, 0, nil
	}
	l, h, ok := strings.Cut(f.Autoscale, "-")
	lo, _ = strconv.Atoi(l)
	hi, _ = strconv.Atoi(h)
	if !ok || lo < 1 || hi < lo {
		return 0, 0, usageErr("--autoscale %q: want MIN-MAX with 1 ≤ MIN ≤ MAX, e.g. 1-8", f.Autoscale)
	}
	return lo, hi, nil
}

// runPool runs a pool of workers, forq's own or the user's command; its
// metrics endpoint serves the extra collectors too. The
// flags are valid: kong ran their Validate methods (validate.go).
func runPool(ctx context.Context, env *Env, cf ConnFlags, tf TopologyFlags, wf WorkerFlags, pf PoolFlags, command []string, extra ...prometheus.Collector) error {
	if len(command) > 0 && command[0] == "--" {
		command = command[1:]
	}
	cfg, err := poolConfig(env, cf, tf, wf, pf, command)
	if err != nil {
		return err
	}
	// The pool reads the backlog itself when it scales or closes; forq's
	// own workers need the broker too, so check it is there before
	// forking anything.
	var nc *nats.Conn // the pool's own connection, if it needs one
	if cfg.Max > 0 || cfg.UntilEmpty || len(command) == 0 {
		nc, err = cf.connect("forq pool", env.Log)
		if err != nil {
			return err
		}
		defer nc.Close()
		backlog, err := queueBacklog(ctx, env.Log, nc, wf.Queue, wf.AckWait, tf)
		if err != nil {
			return err
		}
		if cfg.Max > 0 || cfg.UntilEmpty {
			cfg.Backlog = backlog
		}
	}
	prog, err := drainBar(ctx, env, pf, &cfg)
	if err != nil {
		return err
	}
	defer prog.Finish()
	sup, err := pool.New(cfg)
	if err != nil {
		return usageErr("%v", err)
	}
	ops, err := startPoolOps(env, wf, sup, cfg.Size, nc, extra...)
	if err != nil {
		return err
	}
	defer ops.stop()
	env.Log.Info("pool starting", poolLog(cfg, wf, command)...)
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

// poolConfig returns the supervisor's configuration of a pool of forq
// work, or of command if it is not empty.
func poolConfig(env *Env, cf ConnFlags, tf TopologyFlags, wf WorkerFlags, pf PoolFlags, command []string) (pool.Config, error) {
	cfg := pool.Config{
		Size:          cmp.Or(pf.Workers, runtime.NumCPU()),
		Grace:         wf.Grace,
		MaxRestarts:   pf.MaxRestarts,
		RestartWindow: pf.RestartWindow,
		ReadyTimeout:  pf.ReadyTimeout,
		ScaleInterval: pf.ScaleInterval,
		IdleTimeout:   pf.ScaleIdle,
		UntilEmpty:    pf.UntilEmpty,
		Stdout:        env.Stdout,
		Stderr:        env.Stderr,
		Logger:        env.Log,
		// With JSON logs a child's JSON record is passed on as a record of
		// its own (its level, fields, plus child and pid), and any other
		// line as an INFO record of the pool's: not a prefixed line.
		StructuredOutput: logFormat(env.Log) == "json",
		// The pool's only children are its workers: it may reap whatever
		// else is reparented to it (a worker's descendant that left its
		// session, once its parent died).
		ReapAll: true,
	}
	var err error
	if cfg.MaxRSS, err = parseBytes(pf.MaxMemory); err != nil {
		return cfg, usageErr("--max-memory: %v", err)
	}
	if cfg.Min, cfg.Max, err = pf.autoscale(); err != nil {
		return cfg, err
	}
	if cfg.Max > 0 {
		cfg.Size = cfg.Min
	}
	if cfg.Command, cfg.Env, err = workerCommand(env.Log, cf, tf, wf, pf, command); err != nil {
		return cfg, err
	}
	// forq work children share the CPUs, as the processes of a Python
	// pool do: each gets its part as GOMAXPROCS, unless the user set one.
	if len(command) == 0 && os.Getenv("GOMAXPROCS") == "" {
		cfg.Env = append(cfg.Env, "GOMAXPROCS="+strconv.Itoa(pool.CPUShare(cmp.Or(cfg.Max, cfg.Size))))
	}
	return cfg, nil
}

// workerCommand returns the argv and the environment of a pool's
// workers: forq work with the pool's flags, or the user's command (when
// not empty), which gets them by the environment alone. The flags go by
// the methods next to their structs: childEnv and childArgs (the
// connection flags by childEnv alone).
func workerCommand(log *slog.Logger, cf ConnFlags, tf TopologyFlags, wf WorkerFlags, pf PoolFlags, command []string) (argv, env []string, err error) {
	env = append(cf.childEnv(), wf.childEnv(cmp.Or(pf.MaxTasksPerChild, wf.MaxTasks))...)
	if len(command) > 0 {
		return command, env, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	argv = []string{exe, "--log-format", logFormat(log), "--log-level", logLevel(log), "work"}
	argv = append(argv, tf.childArgs()...)
	argv = append(argv, wf.childArgs()...)
	return argv, env, nil
}

// poolLog returns the attributes of the pool's start-up log: its size,
// queues and workers' program, not their whole command line.
func poolLog(cfg pool.Config, wf WorkerFlags, command []string) []any {
	attrs := []any{"workers", cfg.Size}
	if cfg.Max > 0 {
		attrs = []any{"workers", fmt.Sprintf("%d-%d", cfg.Min, cfg.Max)}
	}
	attrs = append(attrs, "queues", wf.Queue)
	if len(command) > 0 {
		return append(attrs, "command", command[0])
	}
	return append(attrs, "command", "forq work")
}

// drainBar sets up the progress of draining with --until-empty: the
// backlog falling to 0, read as often as the pool reads it. A bar redraws
// itself under the output lines of the pool and its children. It returns
// nil (whose Finish does nothing) when there is no bar to show.
func drainBar(ctx context.Context, env *Env, pf PoolFlags, cfg *pool.Config) (*progress, error) {
	if !cfg.UntilEmpty || cfg.Backlog == nil {
		return nil, nil
	}
	prog, backlog, err := drainProgress(ctx, pf.ProgressFlags, env.Stderr, cfg.Backlog)
	if err != nil {
		return nil, err
	}
	cfg.Backlog = backlog
	if prog.isBar() {
		cfg.Stderr = prog.Writer(cfg.Stderr)
		if isTerminal(env.Stdout) {
			cfg.Stdout = prog.Writer(cfg.Stdout)
		}
		cfg.Logger = newLogger(prog.Writer(env.Stderr), logFormat(env.Log), logLevel(env.Log))
	}
	return prog, nil
}

// startPoolOps serves the pool's metrics and health on --metrics-port:
// it is ready once want workers are, and while its own connection nc (if
// not nil) is connected to the broker: a pool of forq work whose broker
// is gone is not ready, though its workers run (what a docker-compose
// healthcheck of "forq health --http .../readyz" tells). Its registry has
// the extra collectors too.
func startPoolOps(env *Env, wf WorkerFlags, sup *pool.Supervisor, want int, nc *nats.Conn, extra ...prometheus.Collector) (*opsServer, error) {
	reg := newRegistry()
	reg.MustRegister(extra...)
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "forq", Name: "pool_children", Help: "Worker processes running in the pool."},
			func() float64 { return float64(len(sup.Children())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "forq", Name: "pool_children_ready", Help: "Worker processes of the pool that are ready (they said so, or ran for --ready-timeout)."},
			func() float64 { return float64(readyChildren(sup)) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "forq", Name: "pool_child_restarts_total", Help: "Worker processes restarted after crashing."},
			func() float64 { return float64(sup.Restarts()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "forq", Name: "pool_child_recycles_total", Help: "Worker processes replaced after --max-tasks-per-child or --max-memory."},
			func() float64 { return float64(sup.Recycles()) }),
	)
	// Ready workers, not running ones: a worker that cannot start (a
	// wrong command, a broker that refuses it) runs for a moment at each
	// restart but is never ready. forq work is ready as soon as it has
	// connected; a command of the user's that does not write to
	// FORQ_READY_FD counts once it has run for --ready-timeout.
	return startOps(env.Log, wf.MetricsHost, wf.MetricsPort, reg, nil, func() error {
		if nc != nil && !nc.IsConnected() {
			return fmt.Errorf("not connected to the broker (%s)", nc.Status())
		}
		if n := readyChildren(sup); n < want {
			return fmt.Errorf("%d of %d workers ready (%d running)", n, want, len(sup.Children()))
		}
		return nil
	})
}

// readyChildren returns how many of sup's children are ready.
func readyChildren(sup *pool.Supervisor) int {
	n := 0
	for _, c := range sup.Children() {
		if c.Ready {
			n++
		}
	}
	return n
}

// queueBacklog declares the queues' consumers and returns a function that
// reads their backlog: tasks waiting plus tasks in flight.
func queueBacklog(ctx context.Context, log *slog.Logger, nc *nats.Conn, queues []string, ackWait time.Duration, tf TopologyFlags) (func(context.Context) (int64, error), error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	// A broker that cannot declare now (its disk full) is waited for.
	h, err := topology.Retry(ctx, nc, log, func(ctx context.Context) (*topology.Handles, error) {
		return topology.Ensure(ctx, js, topology.Options{Replicas: tf.Replicas, ResultTTL: tf.ResultTTL, DuplicateWindow: tf.DuplicateWindow, Logger: log})
	})
	if err != nil {
		return nil, err
	}
	// Every priority level of each queue (see forq.Priority).
	var cons []jetstream.Consumer
	for _, q := range queues {
		for _, p := range forq.Priorities {
			c, err := topology.Retry(ctx, nc, log, func(ctx context.Context) (jetstream.Consumer, error) {
				return topology.EnsureLevelConsumer(ctx, nc, h.Tasks, q, p, ackWait)
			})
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
	if f*mult >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is larger than any memory", s)
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
