package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/sleep"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/pool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options configure a run.
type Options struct {
	// Command runs this program's hidden bench subcommands: the forq
	// binary and any flags before "bench".
	Command []string
	// URL of the broker.
	URL string
	// Tasks per throughput measurement; Workers in the main pool.
	Tasks, Workers int
	// PayloadSize of each task in bytes.
	PayloadSize int
	// Rate of the latency-under-load measurement, tasks per second.
	Rate float64
	// Samples is the number of idle latency probes.
	Samples int
	// Concurrency of each forq worker, and the baseline's fetch batch.
	Concurrency int
	// Scale lists pool sizes whose end-to-end throughput is measured too.
	Scale []int
	// Queues, if not 0, measures a pool of that many workers, each
	// serving a queue of its own, end to end and idle: see queues.go.
	Queues int
	// IdleTime is how long the idle CPU of that pool is measured over;
	// 0 means DefaultIdleTime.
	IdleTime time.Duration
	// Baseline runs plain JetStream too.
	Baseline bool
	// Rounds is how many times each mode is measured, forq and baseline
	// alternately; each figure is the best of its rounds (0 means 1).
	Rounds int
	// BaselineHeaders makes the baseline publish forq's headers.
	BaselineHeaders bool
	// DuplicateWindow of the streams the run creates, forq's and the
	// baseline's; 0 means forq.DefaultDuplicateWindow. A FORQ_TASKS that
	// exists already keeps its own.
	DuplicateWindow time.Duration
	// BaselineCPUShare gives the baseline's worker processes the CPU share
	// forq's get (GOMAXPROCS = CPUs / workers, as forq pool sets it).
	BaselineCPUShare bool
	// ProfileDir, if set, receives a CPU profile of every worker and
	// producer process.
	ProfileDir string
	// EmbeddedBroker says the broker runs in this process: its CPU time
	// and memory are this process's.
	EmbeddedBroker bool
	// Growth chooses the growth measurements (growth.go).
	Growth GrowthOptions
	// Stderr receives the child processes' output.
	Stderr io.Writer
	// Log gets progress.
	Log *slog.Logger
}

// Figures are the measurements of one mode.
type Figures struct {
	EnqueuePerSec float64 `json:"enqueue_per_sec"`
	// EnqueueConcurrentPerSec is the rate of ConcurrentProducers
	// goroutines of one process, each enqueueing one task at a time.
	EnqueueConcurrentPerSec float64 `json:"enqueue_concurrent_per_sec"`
	// EnqueueProducerCPUUs and EnqueueBrokerCPUUs are the CPU time per
	// task of the producer process and of the broker (embedded broker
	// only) while it enqueues one task at a time; the Concurrent ones
	// the same for the concurrent enqueue.
	EnqueueProducerCPUUs           float64 `json:"enqueue_producer_cpu_us_per_task"`
	EnqueueBrokerCPUUs             float64 `json:"enqueue_broker_cpu_us_per_task,omitempty"`
	EnqueueConcurrentProducerCPUUs float64 `json:"enqueue_concurrent_producer_cpu_us_per_task"`
	EnqueueConcurrentBrokerCPUUs   float64 `json:"enqueue_concurrent_broker_cpu_us_per_task,omitempty"`
	EnqueueBatchPerSec             float64 `json:"enqueue_batch_per_sec"`
	DrainPerSec                    float64 `json:"drain_per_sec"`
	E2EPerSec                      float64 `json:"e2e_per_sec"`
	// E2EResultsPerSec is end to end with every task's result recorded
	// and waited for (forq: WithRecord and Producer.WaitMany; the
	// baseline: a KV put per task by its worker, watched by the
	// producer): the first publish until the producer has every result.
	E2EResultsPerSec float64 `json:"e2e_results_per_sec,omitempty"`
	// E2EBrokerCPUUsPerTask and E2EClientCPUUsPerTask are the CPU time of
	// the broker (embedded only), and of the producer and workers, during
	// e2e_per_sec's run, per task; the E2EResults ones during
	// e2e_results_per_sec's: what recording and waiting for a result
	// costs, less sensitive than throughput to a busy machine. The
	// workers' is read from /proc, in 10 ms ticks.
	E2EBrokerCPUUsPerTask        float64 `json:"e2e_broker_cpu_us_per_task,omitempty"`
	E2EClientCPUUsPerTask        float64 `json:"e2e_client_cpu_us_per_task,omitempty"`
	E2EResultsBrokerCPUUsPerTask float64 `json:"e2e_results_broker_cpu_us_per_task,omitempty"`
	E2EResultsClientCPUUsPerTask float64 `json:"e2e_results_client_cpu_us_per_task,omitempty"`
	LatencyP50Ms                 float64 `json:"latency_p50_ms"`
	LatencyP99Ms                 float64 `json:"latency_p99_ms"`
	LoadLatencyP50Ms             float64 `json:"load_latency_p50_ms"`
	LoadLatencyP99Ms             float64 `json:"load_latency_p99_ms"`
	LoadPerSec                   float64 `json:"load_per_sec"`
	WorkerRSSMB                  float64 `json:"worker_rss_mb"`
	WorkerRSSLoadedMB            float64 `json:"worker_rss_loaded_mb"`
	PoolStartupMs                float64 `json:"pool_startup_ms"`
	// BrokerCPUUsPerTask and ClientCPUUsPerTask are the CPU time (user
	// and system) of the broker, and of the producer and worker
	// processes, over the whole measurement of the mode divided by the
	// tasks it ran: the cost of a task, less sensitive than throughput to
	// what else the machine is doing. The broker's is known only when it
	// is embedded in forq bench.
	BrokerCPUUsPerTask float64 `json:"broker_cpu_us_per_task,omitempty"`
	ClientCPUUsPerTask float64 `json:"client_cpu_us_per_task"`
	// DrainBrokerCPUUsPerTask and DrainWorkerCPUUsPerTask are the same
	// during the drain alone, when only the broker and the workers run:
	// which side a gap in drain_per_sec comes from. The workers' is read
	// from /proc.
	DrainBrokerCPUUsPerTask float64 `json:"drain_broker_cpu_us_per_task,omitempty"`
	DrainWorkerCPUUsPerTask float64 `json:"drain_worker_cpu_us_per_task"`
	// LatencyDist and LoadLatencyDist are the whole distributions behind
	// the latency percentiles at idle and under load.
	LatencyDist     *Distribution `json:"latency_dist,omitempty"`
	LoadLatencyDist *Distribution `json:"load_latency_dist,omitempty"`
	// Scale maps a pool size to its figures.
	Scale map[string]*ScaleFigures `json:"scale,omitempty"`
	// Queues are the figures of the many-queue pool (Options.Queues).
	Queues *QueuesFigures `json:"queues,omitempty"`
	Growth
}

// ScaleFigures are the measurements of one pool size.
type ScaleFigures struct {
	E2EPerSec     float64 `json:"e2e_per_sec"`
	PoolStartupMs float64 `json:"pool_startup_ms"`
	WorkerRSSMB   float64 `json:"worker_rss_mb"`
	// BrokerRSSMB is the broker's resident memory after the end-to-end
	// measurement, when it is embedded.
	BrokerRSSMB float64 `json:"broker_rss_mb,omitempty"`
}

// Distribution is a latency distribution in little room: the latency at
// each of a fixed list of percentiles.
type Distribution struct {
	// N is the number of probes measured.
	N int `json:"n"`
	// Percentiles are DistPercentiles, 0 the fastest probe and 100 the
	// slowest.
	Percentiles []float64 `json:"percentiles"`
	// Ms[i] is the latency at Percentiles[i], in milliseconds.
	Ms []float64 `json:"ms"`
}

// DistPercentiles are the percentiles a Distribution keeps: 0 (the
// fastest), 1 to 99, 99.9 and 100 (the slowest).
var DistPercentiles = func() []float64 {
	p := []float64{0}
	for i := 1; i <= 99; i++ {
		p = append(p, float64(i))
	}
	return append(p, 99.9, 100)
}()

// distribution returns the Distribution of ns, nil if it is empty.
func distribution(ns []int64) *Distribution {
	if len(ns) == 0 {
		return nil
	}
	s := slices.Clone(ns)
	slices.Sort(s)
	d := &Distribution{N: len(s), Percentiles: slices.Clone(DistPercentiles)}
	for _, p := range d.Percentiles {
		d.Ms = append(d.Ms, round(float64(s[rank(len(s), p)])/1e6, 4))
	}
	return d
}

// Settings are what a run was asked to do, and on what.
type Settings struct {
	Tasks  int `json:"tasks"`
	Single int `json:"single_tasks"`
	// Concurrent is how many tasks ConcurrentProducers goroutines
	// enqueue one at a time, Producers how many goroutines.
	Concurrent      int     `json:"concurrent_tasks"`
	Producers       int     `json:"concurrent_producers"`
	Workers         int     `json:"workers"`
	Concurrency     int     `json:"concurrency"`
	PayloadSize     int     `json:"payload_size"`
	Rate            float64 `json:"rate"`
	Samples         int     `json:"latency_samples"`
	Rounds          int     `json:"rounds"`
	BaselineHeaders bool    `json:"baseline_headers,omitempty"`
	// DuplicateWindow is the task streams' duplicate window asked for.
	DuplicateWindow time.Duration `json:"duplicate_window_ns,omitempty"`
	// BaselineCPUShare: the baseline's workers got forq's CPU share.
	BaselineCPUShare bool `json:"baseline_cpu_share,omitempty"`
	// GOMAXPROCS is the environment's GOMAXPROCS, which every worker
	// process then has; empty when each mode's default applies.
	GOMAXPROCS string `json:"gomaxprocs,omitempty"`
	Scale      []int  `json:"scale,omitempty"`
	// Queues is the size of the many-queue pool, 0 when not measured.
	Queues     int    `json:"queues,omitempty"`
	Broker     string `json:"broker"`
	SyncAlways bool   `json:"sync_always"`
	// Embedded is true when the broker ran in forq bench's process.
	Embedded bool   `json:"embedded_broker"`
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpu_model,omitempty"`
	GrowthSettings
}

// Report is the result of a run: forq's figures, and with a baseline its
// figures and the ratio forq ÷ baseline of each.
type Report struct {
	Settings Settings `json:"settings"`
	Figures
	Baseline *Figures       `json:"baseline,omitempty"`
	Ratio    map[string]any `json:"ratio,omitempty"`
}

type runner struct {
	o      Options
	nc     *nats.Conn
	js     jetstream.JetStream
	single int
	// concurrent is how many tasks the concurrent enqueue sends.
	concurrent int
	tasks      int // tasks run in the current mode, for the CPU figures
}

// Run measures forq, and the baseline when asked, on the broker at o.URL.
// It leaves the broker's FORQ_TASKS stream without the bench queue's
// consumer and tasks, and removes the baseline's stream.
func Run(ctx context.Context, o Options) (*Report, error) {
	nc, err := nats.Connect(o.URL, nats.Name("forq bench"))
	if err != nil {
		return nil, fmt.Errorf("connect to the broker at %s: %w", o.URL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	r := &runner{o: o, nc: nc, js: js, single: min(max(o.Tasks/4, 100), 5000), concurrent: min(max(o.Tasks/2, 10*ConcurrentProducers), 20000)}
	rep := &Report{Settings: Settings{
		Tasks: o.Tasks, Single: r.single, Concurrent: r.concurrent, Producers: ConcurrentProducers, Workers: o.Workers, Concurrency: o.Concurrency,
		PayloadSize: max(o.PayloadSize, MinPayload), Rate: o.Rate, Samples: o.Samples, Scale: o.Scale, Rounds: max(o.Rounds, 1), BaselineHeaders: o.BaselineHeaders,
		BaselineCPUShare: o.BaselineCPUShare, GOMAXPROCS: os.Getenv("GOMAXPROCS"), Queues: o.Queues, DuplicateWindow: r.duplicateWindow(),
	}}
	rep.Settings.GrowthSettings = r.growthSettings()
	var f, b *Figures
	for range max(o.Rounds, 1) {
		fi, err := r.mode(ctx, ModeForq)
		if err != nil {
			return nil, fmt.Errorf("forq: %w", err)
		}
		if err := r.growth(ctx, ModeForq, fi, fi.E2EPerSec); err != nil {
			return nil, fmt.Errorf("forq: %w", err)
		}
		f = best(f, fi)
		if o.Baseline {
			bi, err := r.mode(ctx, ModeBaseline)
			if err != nil {
				return nil, fmt.Errorf("baseline: %w", err)
			}
			// At forq's capacity: both modes get the same load.
			if err := r.growth(ctx, ModeBaseline, bi, fi.E2EPerSec); err != nil {
				return nil, fmt.Errorf("baseline: %w", err)
			}
			b = best(b, bi)
		}
	}
	rep.Figures = *f
	if b != nil {
		rep.Baseline = b
		rep.Ratio = ratio(f, b)
	}
	return rep, nil
}

// mode measures one mode with a fresh queue.
func (r *runner) mode(ctx context.Context, mode string) (*Figures, error) {
	r.o.Log.Info("bench: measuring", "mode", mode, "workers", r.o.Workers, "tasks", r.o.Tasks)
	c, err := r.setup(ctx, mode)
	if err != nil {
		return nil, err
	}
	defer r.teardown(mode)
	f := &Figures{Scale: map[string]*ScaleFigures{}}
	r.tasks = 0
	if r.o.EmbeddedBroker {
		freshRSS()
	}
	self0, children0 := cpuTimes()
	defer func() {
		if r.tasks == 0 {
			return
		}
		self1, children1 := cpuTimes()
		f.ClientCPUUsPerTask = round(float64(children1-children0)/1e3/float64(r.tasks), 2)
		if r.o.EmbeddedBroker {
			f.BrokerCPUUsPerTask = round(float64(self1-self0)/1e3/float64(r.tasks), 2)
		}
	}()
	p, err := r.startPool(ctx, mode, c, r.o.Workers)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	f.PoolStartupMs = ms(p.startup)
	time.Sleep(200 * time.Millisecond) // let start-up garbage be collected
	f.WorkerRSSMB = p.rss()

	lat, err := r.produce(ctx, mode, PhaseLatency, r.o.Workers)
	if err != nil {
		return nil, err
	}
	f.LatencyP50Ms, f.LatencyP99Ms = pct(lat.IdleNs, 50), pct(lat.IdleNs, 99)
	f.LoadLatencyP50Ms, f.LoadLatencyP99Ms = pct(lat.LoadNs, 50), pct(lat.LoadNs, 99)
	f.LatencyDist, f.LoadLatencyDist = distribution(lat.IdleNs), distribution(lat.LoadNs)
	f.LoadPerSec = lat.LoadPerSec
	if err := r.drained(ctx, c, lat.LastSeq); err != nil {
		return nil, err
	}

	// Enqueue into the paused queue, then drain it.
	stream, cons := r.names(mode)
	if _, err := r.js.PauseConsumer(ctx, stream, cons, time.Now().Add(time.Hour)); err != nil {
		return nil, fmt.Errorf("pause consumer: %w", err)
	}
	enq, err := r.produce(ctx, mode, PhaseEnqueue, r.o.Workers)
	if err != nil {
		return nil, err
	}
	f.EnqueuePerSec, f.EnqueueConcurrentPerSec, f.EnqueueBatchPerSec = enq.SinglePerSec, enq.ConcurrentPerSec, enq.BatchPerSec
	f.EnqueueProducerCPUUs, f.EnqueueBrokerCPUUs = enq.Single.ProducerUs, enq.Single.BrokerUs
	f.EnqueueConcurrentProducerCPUUs, f.EnqueueConcurrentBrokerCPUUs = enq.Concurrent.ProducerUs, enq.Concurrent.BrokerUs
	// A resume does not wake the broker's delivery loop, the end of a
	// pause does: pause again until a moment just ahead, the start.
	broker0, _ := cpuTimes()
	workers0 := p.cpu()
	t0 := time.Now().Add(20 * time.Millisecond)
	if _, err := r.js.PauseConsumer(ctx, stream, cons, t0); err != nil {
		return nil, fmt.Errorf("resume consumer: %w", err)
	}
	if err := r.drained(ctx, c, enq.LastSeq); err != nil {
		return nil, err
	}
	drained := float64(r.single + r.concurrent + r.o.Tasks)
	f.DrainPerSec = drained / time.Since(t0).Seconds()
	broker1, _ := cpuTimes()
	f.DrainWorkerCPUUsPerTask = round(float64(p.cpu()-workers0)/1e3/drained, 2)
	if r.o.EmbeddedBroker {
		f.DrainBrokerCPUUsPerTask = round(float64(broker1-broker0)/1e3/drained, 2)
	}

	cpu := r.phaseCPU(p)
	f.E2EPerSec, err = r.e2e(ctx, mode, c, r.o.Workers)
	if err != nil {
		return nil, err
	}
	f.E2EBrokerCPUUsPerTask, f.E2EClientCPUUsPerTask = cpu()
	cpu = r.phaseCPU(p)
	f.E2EResultsPerSec, err = r.results(ctx, mode, c)
	if err != nil {
		return nil, err
	}
	f.E2EResultsBrokerCPUUsPerTask, f.E2EResultsClientCPUUsPerTask = cpu()
	f.WorkerRSSLoadedMB = p.rss()
	if r.o.EmbeddedBroker {
		f.BrokerRSSMB, f.BrokerPeakRSSMB = selfRSS()
	}
	p.stop()
	if slices.Contains(r.o.Scale, r.o.Workers) {
		f.Scale[strconv.Itoa(r.o.Workers)] = &ScaleFigures{E2EPerSec: f.E2EPerSec, PoolStartupMs: f.PoolStartupMs, WorkerRSSMB: f.WorkerRSSMB, BrokerRSSMB: f.BrokerRSSMB}
	}
	for _, w := range r.o.Scale {
		if f.Scale[strconv.Itoa(w)] != nil {
			continue
		}
		r.o.Log.Info("bench: scaling", "mode", mode, "workers", w)
		p, err := r.startPool(ctx, mode, c, w)
		if err != nil {
			return nil, err
		}
		s := &ScaleFigures{PoolStartupMs: ms(p.startup)}
		time.Sleep(200 * time.Millisecond)
		s.WorkerRSSMB = p.rss()
		s.E2EPerSec, err = r.e2e(ctx, mode, c, w)
		if r.o.EmbeddedBroker {
			s.BrokerRSSMB, _ = selfRSS()
		}
		p.stop()
		if err != nil {
			return nil, err
		}
		f.Scale[strconv.Itoa(w)] = s
	}
	if len(f.Scale) == 0 {
		f.Scale = nil
	}
	if r.o.Queues > 0 {
		if f.Queues, err = r.manyQueues(ctx, mode, f.E2EPerSec); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (r *runner) e2e(ctx context.Context, mode string, c jetstream.Consumer, workers int) (float64, error) {
	res, err := r.produce(ctx, mode, PhaseE2E, workers)
	if err != nil {
		return 0, err
	}
	if err := r.drained(ctx, c, res.LastSeq); err != nil {
		return 0, err
	}
	return float64(r.o.Tasks) / time.Since(time.Unix(0, res.StartNs)).Seconds(), nil
}

// phaseCPU starts counting the CPU time of a phase of --tasks tasks run
// by pool p and one producer process; the function it returns gives the
// broker's (0 unless embedded) and the producer's and workers' time per
// task, in µs.
func (r *runner) phaseCPU(p *workerPool) func() (broker, client float64) {
	self0, children0 := cpuTimes()
	workers0 := p.cpu()
	return func() (broker, client float64) {
		self1, children1 := cpuTimes()
		per := func(ns int64) float64 { return round(float64(ns)/1e3/float64(r.o.Tasks), 2) }
		if r.o.EmbeddedBroker {
			broker = per(self1 - self0)
		}
		return broker, per(children1 - children0 + p.cpu() - workers0)
	}
}

// results measures end to end with results recorded and waited for, on
// the running pool.
func (r *runner) results(ctx context.Context, mode string, c jetstream.Consumer) (float64, error) {
	res, err := r.produce(ctx, mode, PhaseResults, r.o.Workers)
	if err != nil {
		return 0, err
	}
	// Every result is in; the acks may trail them.
	if err := r.drained(ctx, c, res.LastSeq); err != nil {
		return 0, err
	}
	return res.ResultsPerSec, nil
}

// duplicateWindow is the duplicate window of the streams the run creates.
func (r *runner) duplicateWindow() time.Duration {
	if r.o.DuplicateWindow > 0 {
		return r.o.DuplicateWindow
	}
	return forq.DefaultDuplicateWindow
}

func (r *runner) names(mode string) (stream, consumer string) {
	if mode == ModeForq {
		return forq.StreamTasks, wire.ConsumerName(Queue)
	}
	return BaselineStream, BaselineConsumer
}

// setup declares an empty queue and its consumer for mode.
func (r *runner) setup(ctx context.Context, mode string) (jetstream.Consumer, error) {
	if mode == ModeForq {
		h, err := topology.Ensure(ctx, r.js, topology.Options{DuplicateWindow: r.o.DuplicateWindow})
		if err != nil {
			return nil, err
		}
		_ = r.js.DeleteConsumer(ctx, forq.StreamTasks, wire.ConsumerName(Queue))
		if err := h.Tasks.Purge(ctx, jetstream.WithPurgeSubject(wire.TaskSubject(Queue))); err != nil {
			return nil, fmt.Errorf("purge %s: %w", wire.TaskSubject(Queue), err)
		}
		return topology.EnsureConsumer(ctx, r.js.Conn(), h.Tasks, Queue, 0)
	}
	_ = r.js.DeleteStream(ctx, BaselineStream)
	_ = r.js.DeleteKeyValue(ctx, BaselineResults)
	// As forq's results bucket: file storage, one value per key.
	if _, err := r.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: BaselineResults, Storage: jetstream.FileStorage, TTL: forq.DefaultResultTTL}); err != nil {
		return nil, fmt.Errorf("create bucket %s: %w", BaselineResults, err)
	}
	s, err := r.js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       BaselineStream,
		Subjects:   []string{BaselineSubject, BaselineSubject + ".>"}, // the second for --queues
		Retention:  jetstream.WorkQueuePolicy,
		Storage:    jetstream.FileStorage,
		Duplicates: r.duplicateWindow(),
	})
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", BaselineStream, err)
	}
	return s.CreateConsumer(ctx, baselineConsumerConfig(BaselineConsumer, BaselineSubject))
}

func (r *runner) teardown(mode string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if mode == ModeForq {
		_ = r.js.DeleteConsumer(ctx, forq.StreamTasks, wire.ConsumerName(Queue))
		if s, err := r.js.Stream(ctx, forq.StreamTasks); err == nil {
			_ = s.Purge(ctx, jetstream.WithPurgeSubject(wire.TaskSubject(Queue)))
		}
		r.forgetIDs(ctx)
		return
	}
	_ = r.js.DeleteStream(ctx, BaselineStream)
	_ = r.js.DeleteKeyValue(ctx, BaselineResults)
}

// drained waits until every task up to stream sequence last is acked.
func (r *runner) drained(ctx context.Context, c jetstream.Consumer, last uint64) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		i, err := c.Info(ctx)
		if err == nil && i.NumPending == 0 && i.NumAckPending == 0 && i.AckFloor.Stream >= last {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("queue not drained after 5 minutes (info %+v, err %v)", i, err)
		}
		if err := sleep.For(ctx, 2*time.Millisecond); err != nil {
			return err
		}
	}
}

// workerPool is a running pool of bench workers.
type workerPool struct {
	sup     *pool.Supervisor
	cancel  context.CancelFunc
	done    chan error
	startup time.Duration
	stopped bool
}

// startPool starts n workers of mode and waits until each has a pull
// request waiting at the broker: ready to take a task.
func (r *runner) startPool(ctx context.Context, mode string, c jetstream.Consumer, n int) (*workerPool, error) {
	args := append(slices.Clone(r.o.Command), "bench-worker", "--mode", mode, "--url", r.o.URL,
		"--concurrency", strconv.Itoa(r.o.Concurrency))
	if r.o.ProfileDir != "" {
		args = append(args, "--cpuprofile", filepath.Join(r.o.ProfileDir, fmt.Sprintf("worker-%s-w%d-%%i.pprof", mode, n)))
	}
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
	deadline := time.Now().Add(30 * time.Second)
	for {
		i, err := c.Info(ctx)
		if err == nil && i.NumWaiting >= n {
			p.startup = time.Since(t0)
			return p, nil
		}
		select {
		case err := <-p.done:
			p.stopped = true
			return nil, fmt.Errorf("worker pool stopped while starting: %v", err)
		default:
		}
		if time.Now().After(deadline) || sleep.For(ctx, time.Millisecond) != nil {
			p.stop()
			return nil, fmt.Errorf("%d workers not ready after 30s (waiting pulls: %d)", n, i.NumWaiting)
		}
	}
}

// workerEnv is the environment a pool of n workers of mode gets on top of
// this process's. forq's workers share the CPUs as forq pool's do; the
// baseline's are plain Go programs, with Go's default, unless cpuShare. A
// GOMAXPROCS already set (gomaxprocs) reaches both as it is.
func workerEnv(mode string, n int, cpuShare bool, gomaxprocs string) []string {
	if gomaxprocs != "" || mode != ModeForq && !cpuShare {
		return nil
	}
	return []string{"GOMAXPROCS=" + strconv.Itoa(pool.CPUShare(n))}
}

func (p *workerPool) stop() {
	if p.stopped {
		return
	}
	p.stopped = true
	p.cancel()
	<-p.done
}

// rss returns the largest resident set of the pool's workers, in MiB.
func (p *workerPool) rss() float64 {
	var most int64
	for _, c := range p.sup.Children() {
		rss, _ := pool.RSS(c.PID) // 0 for a worker that is gone
		most = max(most, rss)
	}
	return float64(most) / (1 << 20)
}

// cpu returns the CPU time (user and system) the workers have used so
// far, in nanoseconds, read from /proc/<pid>/stat (in clock ticks).
func (p *workerPool) cpu() (ns int64) {
	for _, c := range p.sup.Children() {
		ns += cpuOf(c.PID)
	}
	return ns
}

// clockTick is the unit of /proc/<pid>/stat's times: USER_HZ, 100 on
// Linux.
const clockTick = 10 * time.Millisecond

// cpuOf returns a process's CPU time in nanoseconds, 0 if it is gone.
func cpuOf(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which may hold spaces and ends
	// at the last ')': state is the 3rd field, utime and stime the 14th
	// and 15th.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return (utime + stime) * int64(clockTick)
}

// produce runs a producer process for phase and returns its result.
func (r *runner) produce(ctx context.Context, mode, phase string, workers int) (*ProducerResult, error) {
	return r.produceArgs(ctx, mode, phase, workers)
}

// produceArgs is produce with extra arguments to the producer process.
func (r *runner) produceArgs(ctx context.Context, mode, phase string, workers int, extra ...string) (*ProducerResult, error) {
	loadTasks := max(100, min(r.o.Tasks/4, int(r.o.Rate*2)))
	args := append(slices.Clone(r.o.Command), "bench-producer", "--mode", mode, "--phase", phase,
		"--url", r.o.URL, "--tasks", strconv.Itoa(r.o.Tasks), "--single", strconv.Itoa(r.single), "--concurrent", strconv.Itoa(r.concurrent),
		"--payload-size", strconv.Itoa(r.o.PayloadSize), "--samples", strconv.Itoa(r.o.Samples),
		"--load-tasks", strconv.Itoa(loadTasks), "--rate", strconv.FormatFloat(r.o.Rate, 'f', -1, 64))
	if r.o.BaselineHeaders {
		args = append(args, "--headers")
	}
	args = append(args, extra...)
	if r.o.EmbeddedBroker {
		args = append(args, "--broker-pid", strconv.Itoa(os.Getpid()))
	}
	if r.o.ProfileDir != "" {
		args = append(args, "--cpuprofile", filepath.Join(r.o.ProfileDir, fmt.Sprintf("producer-%s-w%d-%s.pprof", mode, workers, phase)))
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, r.o.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("producer (%s): %w", phase, err)
	}
	var res ProducerResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return nil, fmt.Errorf("producer (%s) output %q: %w", phase, out.String(), err)
	}
	switch phase {
	case PhaseLatency:
		r.tasks += r.o.Samples + loadTasks
	case PhaseEnqueue:
		r.tasks += r.single + r.concurrent + r.o.Tasks
	case PhaseE2E, PhaseResults:
		r.tasks += r.o.Tasks
	}
	return &res, nil
}

// cpuTimes returns the CPU time, user and system, of this process and of
// its children that have ended, in nanoseconds.
func cpuTimes() (self, children int64) {
	var a, b syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &a)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &b)
	return a.Utime.Nano() + a.Stime.Nano(), b.Utime.Nano() + b.Stime.Nano()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// pct returns the p-th percentile of ns, in milliseconds.
func pct(ns []int64, p float64) float64 {
	if len(ns) == 0 {
		return 0
	}
	s := slices.Clone(ns)
	slices.Sort(s)
	return float64(s[rank(len(s), p)]) / 1e6
}

// rank returns the index of the p-th percentile in a sorted slice of n.
func rank(n int, p float64) int {
	i := int(float64(n)*p/100+0.5) - 1
	return min(max(i, 0), n-1)
}

// best combines the figures of two rounds: the higher throughput, the
// lower latency, memory and start-up time.
func best(a, b *Figures) *Figures {
	if a == nil {
		return b
	}
	hi := func(x *float64, y float64) { *x = max(*x, y) }
	lo := func(x *float64, y float64) { *x = min(*x, y) }
	hi(&a.EnqueuePerSec, b.EnqueuePerSec)
	hi(&a.EnqueueConcurrentPerSec, b.EnqueueConcurrentPerSec)
	hi(&a.EnqueueBatchPerSec, b.EnqueueBatchPerSec)
	hi(&a.DrainPerSec, b.DrainPerSec)
	hi(&a.E2EPerSec, b.E2EPerSec)
	hi(&a.E2EResultsPerSec, b.E2EResultsPerSec)
	// The idle distribution is that of the round with the lower p99.
	if b.LatencyDist != nil && (a.LatencyDist == nil || b.LatencyP99Ms < a.LatencyP99Ms) {
		a.LatencyDist = b.LatencyDist
	}
	lo(&a.LatencyP50Ms, b.LatencyP50Ms)
	lo(&a.LatencyP99Ms, b.LatencyP99Ms)
	// The load figures stay those of one round, the one that reached the
	// higher rate.
	if b.LoadPerSec > a.LoadPerSec || (b.LoadPerSec == a.LoadPerSec && b.LoadLatencyP99Ms < a.LoadLatencyP99Ms) {
		a.LoadPerSec, a.LoadLatencyP50Ms, a.LoadLatencyP99Ms = b.LoadPerSec, b.LoadLatencyP50Ms, b.LoadLatencyP99Ms
		a.LoadLatencyDist = b.LoadLatencyDist
	}
	lo(&a.WorkerRSSMB, b.WorkerRSSMB)
	lo(&a.WorkerRSSLoadedMB, b.WorkerRSSLoadedMB)
	lo(&a.PoolStartupMs, b.PoolStartupMs)
	lo(&a.BrokerCPUUsPerTask, b.BrokerCPUUsPerTask)
	lo(&a.ClientCPUUsPerTask, b.ClientCPUUsPerTask)
	lo(&a.DrainBrokerCPUUsPerTask, b.DrainBrokerCPUUsPerTask)
	lo(&a.DrainWorkerCPUUsPerTask, b.DrainWorkerCPUUsPerTask)
	lo(&a.E2EBrokerCPUUsPerTask, b.E2EBrokerCPUUsPerTask)
	lo(&a.E2EClientCPUUsPerTask, b.E2EClientCPUUsPerTask)
	lo(&a.E2EResultsBrokerCPUUsPerTask, b.E2EResultsBrokerCPUUsPerTask)
	lo(&a.E2EResultsClientCPUUsPerTask, b.E2EResultsClientCPUUsPerTask)
	a.Queues = bestQueues(a.Queues, b.Queues)
	lo(&a.EnqueueProducerCPUUs, b.EnqueueProducerCPUUs)
	lo(&a.EnqueueBrokerCPUUs, b.EnqueueBrokerCPUUs)
	lo(&a.EnqueueConcurrentProducerCPUUs, b.EnqueueConcurrentProducerCPUUs)
	lo(&a.EnqueueConcurrentBrokerCPUUs, b.EnqueueConcurrentBrokerCPUUs)
	for k, bs := range b.Scale {
		as := a.Scale[k]
		if as == nil {
			a.Scale[k] = bs
			continue
		}
		hi(&as.E2EPerSec, bs.E2EPerSec)
		lo(&as.PoolStartupMs, bs.PoolStartupMs)
		lo(&as.WorkerRSSMB, bs.WorkerRSSMB)
		lo(&as.BrokerRSSMB, bs.BrokerRSSMB)
	}
	bestGrowth(&a.Growth, &b.Growth)
	return a
}

// ratio returns forq ÷ baseline for each figure, with the same keys.
func ratio(f, b *Figures) map[string]any {
	fm, bm := toMap(f), toMap(b)
	// A distribution is drawn, not divided.
	for _, k := range []string{"latency_dist", "load_latency_dist"} {
		delete(fm, k)
	}
	return ratioMap(fm, bm)
}

func toMap(v any) map[string]any {
	b, _ := json.Marshal(v)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

func ratioMap(f, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, fv := range f {
		switch fv := fv.(type) {
		case float64:
			if bv, ok := b[k].(float64); ok && bv != 0 {
				out[k] = round(fv/bv, 3)
			}
		case map[string]any:
			if bv, ok := b[k].(map[string]any); ok {
				out[k] = ratioMap(fv, bv)
			}
		}
	}
	return out
}

func round(x float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	if x < 0 {
		return -float64(int64(-x*p+0.5)) / p
	}
	return float64(int64(x*p+0.5)) / p
}

var errNoCPUInfo = errors.New("no model name in /proc/cpuinfo")

// CPUModel returns the CPU's model name from /proc/cpuinfo.
func CPUModel() (string, error) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", errNoCPUInfo
}
