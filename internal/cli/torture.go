package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/torture"
)

// TortureCmd is "forq torture": the fault-injection suite, against an
// embedded broker or the user's.
type TortureCmd struct {
	URL             string        `env:"-" help:"Run against the broker at this URL (its queue --queue is emptied afterwards); by default a 'forq broker' of this binary, with its data in the history directory."`
	Queue           string        `short:"q" env:"FORQ_TORTURE_QUEUE" default:"torture" help:"Queue of the tasks (not FORQ_QUEUE: the queue of your own workers)."`
	Tasks           int           `default:"20000" help:"Tasks of the faults phase."`
	CalmTasks       int           `default:"2000" help:"Tasks of the calm phase before it, which measures the undisturbed throughput; 0 skips it."`
	Workers         int           `short:"n" default:"4" help:"Worker processes of the pool (1 to 1024)."`
	Work            time.Duration `default:"20ms" help:"How long each task's handler works (sleeps)."`
	KillEvery       time.Duration `default:"1.5s" help:"SIGKILL a random worker about this often (each interval between 2/3 and 4/3 of it); 0 kills none."`
	FreezeEvery     time.Duration `help:"SIGSTOP a random worker about this often, and SIGCONT it --freeze-for later; 0 (the default) freezes none."`
	FreezeFor       time.Duration `default:"8s" help:"How long a frozen worker stays stopped."`
	KillPoolEvery   time.Duration `help:"SIGKILL the pool about this often and start a new one; 0 (the default) kills none."`
	KillBrokerEvery time.Duration `help:"SIGKILL the broker about this often and restart it on its data; 0 (the default) kills none. Not with --url."`
	Duration        time.Duration `help:"Make the faults phase last at least this long, enqueueing more tasks as they drain; 0 is as long as --tasks take."`
	Soak            bool          `help:"A long run: --duration 30m unless given."`
	Control         string        `enum:",unsafe-handler,phantom-enqueue" default:"" help:"Run a negative control, which must be reported as losing tasks: unsafe-handler (a handler that reports success before its work is recorded) or phantom-enqueue (100 tasks recorded as enqueued that never were)."`
	DrainTimeout    time.Duration `help:"How long to wait after the faults for every task to complete; 0 is 3 ack waits plus 30s."`
	Timeout         time.Duration `help:"Stop the faults and report after this long, whatever is left to run (reported lost); 0 is no limit."`
	HistoryDir      string        `placeholder:"DIR" help:"Keep the history files in DIR (created; it must be empty); by default a temporary directory, removed if the run is OK."`
	JSON            bool          `help:"Print the report as JSON."`

	PoolArgs []string `arg:"" optional:"" name:"pool-flags" help:"More flags of 'forq pool', after '--', e.g. -- --concurrency 4."`
}

// Run runs the suite, prints the report, and fails if a task was lost, an
// extra run is unexplained, two runs of one task overlapped, or the pool
// stopped.
func (c *TortureCmd) Run(env *Env) error {
	if err := c.check(); err != nil {
		return err
	}
	if c.Soak && c.Duration == 0 {
		c.Duration = 30 * time.Minute
	}
	pool := c.PoolArgs
	if len(pool) > 0 && pool[0] == "--" {
		pool = pool[1:]
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir, keep, err := c.historyDir()
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	o := torture.Options{
		Command: []string{exe, "--log-format", logFormat(env.Log), "--log-level", logLevel(env.Log)},
		URL:     c.URL, Dir: dir, Queue: c.Queue,
		Tasks: c.Tasks, CalmTasks: c.CalmTasks, Workers: c.Workers, Work: c.Work,
		KillEvery: c.KillEvery, FreezeEvery: c.FreezeEvery, FreezeFor: c.FreezeFor,
		PoolKillEvery: c.KillPoolEvery, BrokerKillEvery: c.KillBrokerEvery,
		Duration: c.Duration, Unsafe: c.Control == "unsafe-handler", PoolArgs: pool,
		DrainTimeout: c.DrainTimeout, Timeout: c.Timeout, Log: env.Log,
	}
	if c.Control == "phantom-enqueue" {
		o.Phantom = 100
	}
	res, err := torture.Run(ctx, o)
	if err != nil {
		if !keep {
			removeTemp(env.Log, dir)
		}
		return err
	}
	if res.OK() && !keep {
		removeTemp(env.Log, dir)
		res.Dir = "(removed: the run was OK; keep it with --history-dir)"
	}
	if err := c.report(env, res); err != nil {
		return err
	}
	if !res.OK() {
		return &exitError{code: ExitError, err: fmt.Errorf("the run broke forq's promises; the history and the pool's output are in %s", dir)}
	}
	return nil
}

// check checks the flags.
func (c *TortureCmd) check() error {
	switch {
	case c.Tasks < 1 || c.CalmTasks < 0:
		return usageErr("--tasks must be at least 1 and --calm-tasks not negative")
	case c.Workers < 1 || c.Workers > maxPoolWorkers:
		return usageErr("--workers %d: must be 1 to %d", c.Workers, maxPoolWorkers)
	case slices.ContainsFunc([]time.Duration{c.Work, c.KillEvery, c.FreezeEvery, c.KillPoolEvery, c.KillBrokerEvery, c.Duration, c.DrainTimeout, c.Timeout},
		func(d time.Duration) bool { return d < 0 }):
		return usageErr("durations must not be negative")
	case c.FreezeEvery > 0 && c.FreezeFor <= 0:
		return usageErr("--freeze-for %s: must be positive with --freeze-every", c.FreezeFor)
	case c.KillBrokerEvery > 0 && c.URL != "":
		return usageErr("--kill-broker-every needs the broker forq torture starts: leave out --url")
	}
	return validateQueues([]string{c.Queue})
}

// historyDir returns the directory of the history files: --history-dir,
// which must be empty, and is kept; or a new temporary one, kept only if
// the run breaks a promise.
func (c *TortureCmd) historyDir() (dir string, keep bool, err error) {
	if c.HistoryDir == "" {
		dir, err = os.MkdirTemp("", "forq-torture-")
		return dir, false, err
	}
	if err := os.MkdirAll(c.HistoryDir, 0o755); err != nil {
		return "", false, err
	}
	if ents, err := os.ReadDir(c.HistoryDir); err != nil || len(ents) > 0 {
		return "", false, usageErr("--history-dir %s: must be an empty directory (%d entries, %v)", c.HistoryDir, len(ents), err)
	}
	return c.HistoryDir, true, nil
}

// report prints the run's report, as text or JSON.
func (c *TortureCmd) report(env *Env, res *torture.Result) error {
	if !c.JSON {
		res.WriteText(env.Stdout)
		return nil
	}
	enc := json.NewEncoder(env.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

// tortureHandlers returns the handlers of forq torture's tasks for a
// worker whose pool was started by forq torture (dir set), else nil.
func tortureHandlers(dir string) (*torture.Handlers, error) {
	if dir == "" {
		return nil, nil
	}
	return torture.NewHandlers(dir)
}

// registerTorture adds the handlers of forq torture's tasks to w, if any.
func registerTorture(w *consumer.Worker, h *torture.Handlers) {
	if h != nil {
		h.Register(w)
	}
}
