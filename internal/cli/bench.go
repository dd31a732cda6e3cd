package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/internal/bench"
	"github.com/forqhq/forq/internal/heapfloor"
	"github.com/forqhq/forq/pool"
	"github.com/nats-io/nats.go"
)

// BenchCmd is "forq bench [flags]". The processes it starts are the hidden
// commands bench-worker and bench-producer of the same binary.
type BenchCmd struct {
	Tasks            int           `default:"20000" help:"Tasks per throughput measurement."`
	Workers          int           `short:"w" default:"0" help:"Worker processes; 0 is the number of CPUs."`
	PayloadSize      int           `default:"64" help:"Payload of each task in bytes (at least 16: the enqueue time and a probe number)."`
	Rate             float64       `default:"2000" help:"Tasks per second of the latency-under-load measurement."`
	Samples          int           `default:"1000" help:"Tasks sent one at a time at idle to measure latency."`
	Concurrency      int           `short:"c" default:"256" help:"Each forq worker's --concurrency (it fetches up to that many tasks per pull, at most 256); the baseline's fetch batch."`
	Scale            []int         `default:"1,2,4,8" help:"Pool sizes whose end-to-end throughput, start-up and RSS are measured too; empty to skip."`
	Queues           int           `default:"0" help:"Also measure this many queues, each served by a worker process of its own, end to end (against one queue with the main pool), and the broker's and workers' CPU while that pool sits idle; 0 to skip."`
	IdleTime         time.Duration `default:"5s" help:"How long the idle CPU of the --queues pool is measured over."`
	Baseline         bool          `help:"Measure plain JetStream in the same layout too, and print the ratio forq/JetStream of each figure."`
	Rounds           int           `default:"1" help:"Measure each mode this many times, forq and baseline alternately, and report the best of each figure (a busy machine is noisy)."`
	BaselineCPUShare bool          `help:"Give the baseline's worker processes the CPU share forq pool gives forq's (GOMAXPROCS = CPUs / workers), to tell the cost of forq's code from the gain of that layout."`
	DuplicateWindow  time.Duration `default:"2m" help:"Duplicate window of the task streams the run creates, forq's and the baseline's: the broker holds every task ID of the window in memory (see --backlog)."`
	BaselineHeaders  bool          `help:"Make the baseline publish forq's headers too (a unique Nats-Msg-Id and the type, as forq sends a task with the default attempts), to tell the cost of the wire format from that of forq's code."`
	JSON             bool          `help:"Print one JSON object instead of a table."`
	HTML             string        `name:"html" placeholder:"FILE" help:"Write the report to FILE too, as one self-contained HTML page: charts (inline SVG), settings and figures; no script, nothing loaded from elsewhere."`
	SVGDir           string        `name:"svg-dir" placeholder:"DIR" help:"Write each chart of the HTML report to DIR as an SVG file (throughput.svg, scale.svg, latency.svg)."`
	From             string        `placeholder:"FILE" help:"Measure nothing: read the report from FILE, written by --json, and print or draw it (with --html, --svg-dir)."`
	BenchGrowthFlags
	// No FORQ_URL: set for the other commands, it would turn a benchmark
	// into load on a live broker, with a 'bench' queue left behind.
	URL        string `env:"-" help:"Use the broker at this URL instead of an embedded one. Its FORQ_TASKS stream gets a 'bench' queue, emptied after the run. Only this flag: FORQ_URL does not apply."`
	SyncAlways bool   `help:"Make the embedded broker fsync every write before acknowledging it."`
	CPUProfile string `name:"cpuprofile" placeholder:"FILE" help:"Write a CPU profile of this process (the embedded broker and the measuring) to FILE."`
	ProfileDir string `placeholder:"DIR" help:"Write a CPU profile of every worker and producer process to DIR."`
}

// validate checks the flags before anything is measured.
func (c *BenchCmd) validate() error {
	if c.Tasks < 1 || c.Samples < 1 || c.Rounds < 1 || c.Concurrency < 1 || c.Rate <= 0 || c.Workers < 0 {
		return usageErr("--tasks, --samples, --rounds, --concurrency and --rate must be positive, --workers not negative")
	}
	if c.DuplicateWindow < time.Second {
		return usageErr("--duplicate-window %s: must be at least 1s", c.DuplicateWindow)
	}
	if c.Queues < 0 || c.Queues > 1024 || c.IdleTime <= 0 {
		return usageErr("--queues must be 0 to 1024, --idle-time positive")
	}
	if c.SyncAlways && c.URL != "" {
		return usageErr("--sync-always sets the embedded broker's fsync; with --url the broker's own setting holds")
	}
	if c.PayloadSize < bench.MinPayload {
		return usageErr("--payload-size %d: must be at least %d", c.PayloadSize, bench.MinPayload)
	}
	for _, w := range c.Scale {
		if w < 1 {
			return usageErr("--scale: %d workers; each size must be at least 1", w)
		}
	}
	if err := c.BenchGrowthFlags.validate(); err != nil {
		return err
	}
	return c.checkOutputs()
}

// checkOutputs checks, before anything is measured, that the files asked
// for can be written: a run can take minutes, and its figures must not be
// lost to a mistyped path at the end.
func (c *BenchCmd) checkOutputs() error {
	if c.HTML != "" {
		dir := filepath.Dir(c.HTML)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return usageErr("--html %s: no directory %s to write it in", c.HTML, dir)
		}
	}
	if c.SVGDir != "" {
		if err := os.MkdirAll(c.SVGDir, 0o750); err != nil {
			return usageErr("--svg-dir: %v", err)
		}
	}
	return nil
}

// Run measures and prints the figures.
func (c *BenchCmd) Run(env *Env) (err error) {
	if err := c.validate(); err != nil {
		return err
	}
	if c.From != "" {
		rep, err := readReport(c.From)
		if err != nil {
			return err
		}
		return c.output(env, rep)
	}
	if c.Workers == 0 {
		c.Workers = runtime.NumCPU()
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if c.ProfileDir != "" {
		if err := os.MkdirAll(c.ProfileDir, 0o750); err != nil {
			return err
		}
		if c.ProfileDir, err = filepath.Abs(c.ProfileDir); err != nil {
			return err
		}
	}
	if c.CPUProfile != "" {
		stopProfile, perr := startProfile(c.CPUProfile)
		if perr != nil {
			return perr
		}
		defer func() { err = errors.Join(err, stopProfile()) }()
	}
	ctx, stop := signalContext()
	defer stop()

	url, where := c.URL, c.URL
	if url == "" {
		dir, err := os.MkdirTemp("", "forq-bench-")
		if err != nil {
			return err
		}
		defer removeTemp(env.Log, dir)
		s, err := broker.New(broker.Options{DataDir: dir, SyncAlways: c.SyncAlways})
		if err != nil {
			return err
		}
		s.Start()
		defer s.Shutdown()
		if err := s.WaitReady(0); err != nil {
			return err
		}
		url, where = s.ClientURL(), "embedded in this process, data in "+os.TempDir()
	}
	rep, err := bench.Run(ctx, bench.Options{
		Command: []string{exe, "--log-level=warn"}, URL: url,
		Tasks: c.Tasks, Workers: c.Workers, PayloadSize: c.PayloadSize, Rate: c.Rate,
		Samples: c.Samples, Concurrency: c.Concurrency, Scale: c.Scale, Queues: c.Queues, IdleTime: c.IdleTime, Baseline: c.Baseline, Rounds: c.Rounds, BaselineHeaders: c.BaselineHeaders, BaselineCPUShare: c.BaselineCPUShare,
		DuplicateWindow: c.DuplicateWindow, ProfileDir: c.ProfileDir, EmbeddedBroker: c.URL == "", Stderr: env.Stderr, Log: env.Log,
		Growth: c.BenchGrowthFlags.options(),
	})
	if err != nil {
		return err
	}
	rep.Settings.Broker = where
	rep.Settings.SyncAlways = c.SyncAlways
	rep.Settings.Embedded = c.URL == ""
	rep.Settings.CPUs = runtime.NumCPU()
	rep.Settings.CPUModel, _ = bench.CPUModel()
	return c.output(env, rep)
}

// output prints the report, as a table or JSON, and writes its HTML page
// and SVG charts if asked.
func (c *BenchCmd) output(env *Env, rep *bench.Report) error {
	if err := c.print(env, rep); err != nil {
		return err
	}
	if c.HTML != "" {
		if err := writeFile(c.HTML, rep.WriteHTML); err != nil {
			return fmt.Errorf("--html: %w", err)
		}
		env.Log.Info("bench: wrote the HTML report", "file", c.HTML)
	}
	if c.SVGDir != "" {
		files, err := rep.WriteSVGs(c.SVGDir)
		if err != nil {
			return fmt.Errorf("--svg-dir: %w", err)
		}
		env.Log.Info("bench: wrote the charts", "files", files)
	}
	return nil
}

// print writes the figures to stdout: one JSON object, or the table.
func (c *BenchCmd) print(env *Env, rep *bench.Report) error {
	if c.JSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return rep.WriteTable(env.Stdout)
}

// readReport reads a report written by forq bench --json.
func readReport(file string) (*bench.Report, error) {
	b, err := os.ReadFile(file) //nolint:gosec // the user's own file
	if err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("--from %s: %w", file, err)
	}
	return &rep, nil
}

// writeFile creates file and writes it with write.
func writeFile(file string, write func(io.Writer) error) error {
	f, err := os.Create(file) //nolint:gosec // the user's own file
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		_ = f.Close() // the error to report is write's
		return err
	}
	return f.Close()
}

// startProfile starts a CPU profile into file; stop ends it and reports
// whether the whole profile was written.
func startProfile(file string) (stop func() error, err error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close() // nothing was written; the error to report is the one above
		return nil, err
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("writing the CPU profile: %w", err)
		}
		return nil
	}, nil
}

// BenchWorkerCmd is a worker process of "forq bench".
type BenchWorkerCmd struct {
	Mode           string        `required:"" enum:"forq,baseline" help:"forq or baseline."`
	URL            string        `required:"" help:"Broker URL."`
	Concurrency    int           `default:"256" help:"The forq worker's concurrency; the baseline's fetch batch."`
	Queue          string        `placeholder:"QUEUE" help:"Serve this queue (the baseline: the consumer of that name) instead of the main one; %i is replaced by the pool index."`
	IdlePoll       time.Duration `help:"forq: the worker's Config.IdlePoll; 0 is its default."`
	StatusInterval time.Duration `help:"forq: the worker's Config.StatusInterval; 0 is its default, negative turns it off."`
	CPUProfile     string        `name:"cpuprofile" placeholder:"FILE" help:"Write a CPU profile to FILE; %i is replaced by the pool index."`
}

// Run runs the worker until SIGTERM.
func (c *BenchWorkerCmd) Run(env *Env) (err error) {
	if c.CPUProfile != "" {
		stopProfile, perr := startProfile(strings.ReplaceAll(c.CPUProfile, "%i", os.Getenv(pool.EnvIndex)))
		if perr != nil {
			return perr
		}
		defer func() { err = errors.Join(err, stopProfile()) }()
	}
	if c.Mode == bench.ModeForq {
		// As "forq work" runs by default (--heap-floor); the baseline
		// worker, a plain JetStream program, keeps Go's default. GOGC set
		// in the environment turns it off, for both to run alike.
		defer heapfloor.Start(heapfloor.Default, os.Getenv("GOGC")).Stop()
	}
	ctx, stop := signalContext()
	defer stop()
	nc, err := nats.Connect(c.URL, nats.Name(fmt.Sprintf("forq bench worker %d", os.Getpid())))
	if err != nil {
		return err
	}
	defer nc.Close()
	return bench.RunWorker(ctx, nc, bench.WorkerOptions{Mode: c.Mode, Concurrency: c.Concurrency, Queue: strings.ReplaceAll(c.Queue, "%i", os.Getenv(pool.EnvIndex)),
		IdlePoll: c.IdlePoll, StatusInterval: c.StatusInterval, Log: env.Log})
}

// BenchProducerCmd is a producer process of "forq bench".
type BenchProducerCmd struct {
	Mode        string  `required:"" enum:"forq,baseline" help:"forq or baseline."`
	Phase       string  `required:"" enum:"latency,enqueue,e2e,fill,load,results" help:"What to do."`
	URL         string  `required:"" help:"Broker URL."`
	Tasks       int     `default:"1000" help:"Tasks of a batch."`
	Single      int     `default:"100" help:"Tasks enqueued one at a time."`
	Concurrent  int     `default:"0" help:"Tasks enqueued one at a time by 16 goroutines at once (phase enqueue)."`
	PayloadSize int     `default:"64" help:"Payload size in bytes."`
	Samples     int     `default:"100" help:"Latency probes at idle."`
	LoadTasks   int     `default:"100" help:"Latency probes at --rate."`
	Rate        float64 `default:"1000" help:"Probes per second under load."`
	Headers     bool    `help:"Baseline: publish forq's headers too."`
	Queues      int     `help:"Spread the e2e batch over this many queues (bench-q0, bench-q1, ...) instead of the main queue."`
	BrokerPID   int     `help:"The broker's process, whose CPU time the enqueue phase measures; 0 for none."`
	CPUProfile  string  `name:"cpuprofile" placeholder:"FILE" help:"Write a CPU profile to FILE."`
}

// Run runs the phase and prints its result as JSON.
func (c *BenchProducerCmd) Run(env *Env) (err error) {
	if c.CPUProfile != "" {
		stopProfile, perr := startProfile(c.CPUProfile)
		if perr != nil {
			return perr
		}
		defer func() { err = errors.Join(err, stopProfile()) }()
	}
	nc, err := nats.Connect(c.URL, nats.Name(fmt.Sprintf("forq bench producer %d", os.Getpid())))
	if err != nil {
		return err
	}
	defer nc.Close()
	res, err := bench.RunProducer(context.Background(), nc, bench.ProducerOptions{
		Mode: c.Mode, Phase: c.Phase, Tasks: c.Tasks, Single: c.Single, Concurrent: c.Concurrent, PayloadSize: c.PayloadSize,
		Samples: c.Samples, LoadTasks: c.LoadTasks, Rate: c.Rate, Headers: c.Headers, Queues: c.Queues, BrokerPID: c.BrokerPID,
	})
	if err != nil {
		return err
	}
	return json.NewEncoder(env.Stdout).Encode(res)
}

// BenchGrowthFlags are forq bench's flags for how the cost grows with the
// work. Each is off by default: a backlog of a million tasks, large
// payloads and three loads would make the default run several times as
// long.
type BenchGrowthFlags struct {
	Backlog       int       `default:"0" placeholder:"N" help:"Also time the drain of N tasks queued beforehand (e.g. 1000000), beside the drain of --tasks, with the embedded broker's memory before, full and after; 0 skips it."`
	Payloads      []int     `placeholder:"BYTES" help:"Also measure batch enqueue, drain and end to end with payloads of these sizes (e.g. 64,4096,262144), in tasks/s and MB/s; large payloads run fewer than --tasks tasks (at most 128 MiB each). Empty skips it."`
	LoadFractions []float64 `placeholder:"F" help:"Also measure latency at these fractions of forq's end-to-end throughput (e.g. 0.25,0.5,0.75), the same load for the baseline. Empty skips it."`
}

// maxPayload is the largest --payloads size: under the broker's default
// 1 MiB message limit with forq's headers.
const maxPayload = 1 << 19

func (g *BenchGrowthFlags) validate() error {
	if g.Backlog < 0 {
		return usageErr("--backlog %d: must be 0 (skip) or a number of tasks", g.Backlog)
	}
	for _, p := range g.Payloads {
		if p < bench.MinPayload || p > maxPayload {
			return usageErr("--payloads: %d bytes; each size must be %d to %d", p, bench.MinPayload, maxPayload)
		}
	}
	for _, f := range g.LoadFractions {
		if !(f > 0 && f <= 1) {
			return usageErr("--load-fractions: %g; each fraction of the capacity must be above 0 and at most 1", f)
		}
	}
	return nil
}

func (g *BenchGrowthFlags) options() bench.GrowthOptions {
	return bench.GrowthOptions{Backlog: g.Backlog, Payloads: g.Payloads, LoadFractions: g.LoadFractions}
}
