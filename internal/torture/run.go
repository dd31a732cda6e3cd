package torture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/internal/sleep"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The phases of a run (Event.Phase of an enqueued task).
const (
	PhaseCalm   = "calm"   // no faults: the undisturbed throughput
	PhaseFaults = "faults" // with the faults injected
)

// Options configure Run. Command, Dir and Tasks are required.
type Options struct {
	// Command runs the forq binary: its path and any flags before the
	// subcommand ("pool", "broker").
	Command []string
	// URL of the broker; "" starts a "forq broker" of Command with its
	// data in Dir/broker, on a free port.
	URL string
	// Dir is the history directory; it must exist. The pool's and the
	// broker's output go to pool.log and broker.log in it.
	Dir string
	// Queue the tasks go to; "" means DefaultQueue.
	Queue string
	// Tasks enqueued for the faults phase; CalmTasks for the undisturbed
	// phase before it (0 skips it).
	Tasks, CalmTasks int
	// Workers of the pool (its --workers).
	Workers int
	// Work is how long each task's handler works.
	Work time.Duration
	// KillEvery is the mean time between SIGKILLs of a random worker,
	// each interval drawn between 2/3 and 4/3 of it; 0 kills none.
	KillEvery time.Duration
	// FreezeEvery is the mean time between SIGSTOPs of a random worker,
	// each SIGCONTed FreezeFor later; 0 freezes none.
	FreezeEvery, FreezeFor time.Duration
	// PoolKillEvery is the mean time between SIGKILLs of the pool, each
	// followed by a new pool; 0 kills none.
	PoolKillEvery time.Duration
	// BrokerKillEvery is the mean time between SIGKILLs of the broker,
	// each followed by a restart on the same data; 0 kills none. Only
	// with the broker Run starts itself (URL "").
	BrokerKillEvery time.Duration
	// Duration, if positive, makes the faults phase last at least that
	// long: more tasks are enqueued as the first ones drain.
	Duration time.Duration
	// Unsafe runs the tasks with TypeUnsafe, the negative control that
	// acknowledges before it works: the checker must find losses.
	Unsafe bool
	// Phantom is a negative control: this many tasks are recorded as
	// acknowledged that were never enqueued.
	Phantom int
	// PoolArgs are more flags of "forq pool", after Run's own.
	PoolArgs []string
	// DrainTimeout bounds the wait, after the faults, for every task to
	// complete; 0 means 3 ack waits plus 30s.
	DrainTimeout time.Duration
	// Timeout, if positive, bounds the whole run: past it the faults
	// stop and the run is checked as it is (Result.CutShort says so).
	Timeout time.Duration
	// Log gets progress; nil means slog.Default().
	Log *slog.Logger
}

// DefaultQueue is the queue of Run's tasks unless Options.Queue says.
const DefaultQueue = "torture"

// Phase is the throughput of one phase: Completed of its Tasks completed
// (first runs) within Seconds, from its first enqueue to when none of its
// tasks was left waiting for a first delivery.
type Phase struct {
	Tasks     int     `json:"tasks"`
	Completed int     `json:"completed"`
	Seconds   float64 `json:"seconds"`
	PerSec    float64 `json:"per_sec"`
}

// Result is what Run measured and found.
type Result struct {
	*Report
	Calm        Phase `json:"calm"`
	UnderFaults Phase `json:"under_faults"`
	// Ratio is UnderFaults.PerSec / Calm.PerSec (0 without a calm phase).
	Ratio float64 `json:"ratio"`
	// AckWait is the queue's consumer's.
	AckWait time.Duration `json:"ack_wait_ns"`
	// DrainSeconds is how long every task took to complete after the
	// faults stopped; Drained is false if some never did.
	DrainSeconds float64 `json:"drain_seconds"`
	Drained      bool    `json:"drained"`
	// PoolExited says how the pool ended if it stopped by itself during
	// the run, with the last lines of its output; "" if it did not.
	PoolExited string `json:"pool_exited,omitempty"`
	// StillQueued is how many tasks the queue held at the end (waiting
	// or in flight): a lost task among them was not run yet, which only
	// a run cut short or a stopped pool leaves.
	StillQueued uint64 `json:"still_queued"`
	// CutShort says why the run stopped before every task had its
	// chance: Options.Timeout, or the caller's context (an interrupt).
	// The tasks not run yet are then reported lost.
	CutShort string `json:"cut_short,omitempty"`
	// Dir is the history directory.
	Dir string `json:"history_dir"`
}

// OK reports whether the run kept every promise and the pool kept
// running.
func (r *Result) OK() bool { return r.Report.OK() && r.PoolExited == "" && r.CutShort == "" }

// WriteText writes the result for a person.
func (r *Result) WriteText(w io.Writer) {
	if r.PoolExited != "" {
		fmt.Fprintf(w, "FAILED: the pool exited by itself during the run: %s\n", r.PoolExited)
	}
	if r.CutShort != "" {
		fmt.Fprintf(w, "FAILED: the run was cut short: %s\n", r.CutShort)
	}
	r.Report.WriteText(w, 10)
	if r.StillQueued > 0 {
		fmt.Fprintf(w, "  still queued        %d (not run yet when the run ended)\n", r.StillQueued)
	}
	if r.Calm.Tasks > 0 {
		fmt.Fprintf(w, "  calm throughput     %.0f tasks/s (%d in %.1fs)\n", r.Calm.PerSec, r.Calm.Completed, r.Calm.Seconds)
	}
	fmt.Fprintf(w, "  under faults        %.0f tasks/s (%d in %.1fs)", r.UnderFaults.PerSec, r.UnderFaults.Completed, r.UnderFaults.Seconds)
	if r.Ratio > 0 {
		fmt.Fprintf(w, ", %.2f of calm", r.Ratio)
	}
	fmt.Fprintln(w)
	drained := "every task completed"
	if !r.Drained {
		drained = "gave up waiting for the rest"
	}
	fmt.Fprintf(w, "  after the faults    %.1fs until %s (ack wait %s)\n", r.DrainSeconds, drained, r.AckWait)
	fmt.Fprintf(w, "  history             %s\n", r.Dir)
}

// runner is one Run.
type runner struct {
	o      Options
	log    *slog.Logger
	nonce  string
	typ    string
	work   []byte
	nc     *nats.Conn
	js     jetstream.JetStream
	p      *producer.Producer
	enqLog *Log
	faults *Log
	inject *Injector
	tail   *tail
	done   map[string]time.Time // first completed run of each task
	ready  map[int]bool         // worker PIDs that registered the handlers
	// enqueued are the tasks recorded as acknowledged.
	enqueued map[string]bool
	outputs  map[string]*os.File

	mu     sync.Mutex // guards pool and broker, which the injectors replace
	pool   *child
	broker *child
	url    string
	port   int
	exited string // how the pool ended by itself
	queued uint64 // tasks left in the queue at the end
}

// Run runs the harness: a broker (o.URL's, or its own), a pool of
// o.Workers running the harness's handler, a calm phase of o.CalmTasks
// tasks, then o.Tasks tasks with the faults injected; it waits for every
// task to complete, stops the pool, and checks the history. The error is
// for a run that could not be made (a bad option, no broker); what the
// run found is in the Result.
func Run(ctx context.Context, o Options) (*Result, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &runner{o: o, log: o.Log, typ: TypeSafe, work: []byte(o.Work.String()),
		nonce: forq.NewID()[28:], tail: newTail(o.Dir), done: map[string]time.Time{}, ready: map[int]bool{}, enqueued: map[string]bool{}, outputs: map[string]*os.File{}}
	if o.Unsafe {
		r.typ = TypeUnsafe
	}
	defer func() {
		for _, f := range r.outputs {
			_ = f.Close() // the children's logs, for people; written unbuffered
		}
	}()
	if r.enqLog, err = OpenLog(filepath.Join(o.Dir, FileEnqueued)); err != nil {
		return nil, err
	}
	// The history logs are written unbuffered, each Append checked.
	defer func() { _ = r.enqLog.Close() }()
	if r.faults, err = OpenLog(filepath.Join(o.Dir, FileFaults)); err != nil {
		return nil, err
	}
	defer func() { _ = r.faults.Close() }()
	r.inject = NewInjector(r.faults)

	r.url = o.URL
	if r.url == "" {
		if err := r.startBroker(); err != nil {
			return nil, err
		}
		defer func() { r.currentBroker().stop(10 * time.Second) }()
	}
	if r.nc, err = nats.Connect(r.url, nats.Name("forq torture"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond)); err != nil {
		return nil, fmt.Errorf("torture: connect to the broker at %s: %w", r.url, err)
	}
	defer r.nc.Close()
	if r.js, err = jetstream.New(r.nc); err != nil {
		return nil, err
	}
	if r.p, err = producer.New(ctx, r.nc, producer.Config{}); err != nil {
		return nil, fmt.Errorf("torture: %w", err)
	}
	if o.URL != "" {
		defer r.cleanQueue()
	}

	wctx, stopWatch := context.WithCancel(context.Background())
	w := &watcher{log: r.faults, pool: func() int { return r.currentPool().pid }}
	if err := r.startPool(); err != nil {
		stopWatch()
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Go(func() { w.run(wctx, 20*time.Millisecond) })
	defer func() { stopWatch(); wg.Wait() }()
	defer func() { r.currentPool().stop(30 * time.Second) }()

	res := &Result{Dir: o.Dir}
	outer := ctx
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	if err := r.waitReady(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	cons, err := r.consumer(ctx)
	if err != nil {
		return nil, err
	}
	res.AckWait = cons.CachedInfo().Config.AckWait
	if err := r.phases(ctx, outer, cons, w, res); err != nil {
		return nil, err
	}
	// What follows must be done whatever ctx says.
	ctx = context.WithoutCancel(ctx)
	r.log.Info("torture: stopping the pool", "drained", res.Drained)
	r.mu.Lock()
	res.PoolExited = r.exited
	r.mu.Unlock()
	r.currentPool().stop(30 * time.Second)
	stopWatch()
	wg.Wait()

	h, err := Read(o.Dir)
	if err != nil {
		return nil, err
	}
	res.Report = Check(h, CheckOptions{})
	if pending, inFlight, ok := r.backlog(ctx, cons); ok {
		r.queued = pending + inFlight
		res.StillQueued = r.queued
	}
	r.locate(ctx, res.Report.Lost)
	return res, nil
}

// withDefaults checks o and returns it with its defaults filled in.
func (o Options) withDefaults() (Options, error) {
	if len(o.Command) == 0 || o.Dir == "" || o.Tasks < 1 || o.CalmTasks < 0 || o.Workers < 1 {
		return o, fmt.Errorf("torture: %w: need a command, a history directory, tasks and workers", forq.ErrInvalidOption)
	}
	if o.BrokerKillEvery > 0 && o.URL != "" {
		return o, fmt.Errorf("torture: %w: broker kills need the broker the harness starts, not --url", forq.ErrInvalidOption)
	}
	if o.Queue == "" {
		o.Queue = DefaultQueue
	}
	if err := forq.ValidateQueue(o.Queue); err != nil {
		return o, err
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return o, nil
}

// phases runs the calm phase (if any) and the faults phase, then waits
// for the tasks to drain, and writes what it measured into res. ctx bounds
// the run (Options.Timeout); outer is the caller's, which tells an
// interrupt from a run out of its time.
func (r *runner) phases(ctx, outer context.Context, cons jetstream.Consumer, w *watcher, res *Result) error {
	o := r.o
	var err error
	if o.CalmTasks > 0 {
		r.log.Info("torture: calm phase", "tasks", o.CalmTasks, "workers", o.Workers)
		if res.Calm, err = r.phase(ctx, cons, PhaseCalm, o.CalmTasks, nil); err != nil {
			return err
		}
		// Let the calm phase's last tasks finish before the faults.
		r.drain(ctx, cons, time.Minute)
	}
	r.log.Info("torture: faults phase", "tasks", o.Tasks, "kill_every", o.KillEvery, "freeze_every", o.FreezeEvery,
		"pool_kill_every", o.PoolKillEvery, "broker_kill_every", o.BrokerKillEvery)
	if res.UnderFaults, err = r.phase(ctx, cons, PhaseFaults, o.Tasks, w); err != nil {
		return err
	}
	if res.Calm.PerSec > 0 {
		res.Ratio = res.UnderFaults.PerSec / res.Calm.PerSec
	}
	timeout := o.DrainTimeout
	if timeout <= 0 {
		timeout = 3*res.AckWait + 30*time.Second
	}
	t0 := time.Now()
	res.Drained = r.drain(ctx, cons, timeout)
	res.DrainSeconds = time.Since(t0).Seconds()
	switch {
	case outer.Err() != nil:
		res.CutShort = "interrupted"
	case ctx.Err() != nil:
		res.CutShort = fmt.Sprintf("it ran out of its time (%s): %d of %d tasks under faults completed at %.0f tasks/s", o.Timeout,
			res.UnderFaults.Completed, res.UnderFaults.Tasks, res.UnderFaults.PerSec)
	}
	return nil
}

func (r *runner) currentPool() *child {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pool
}

func (r *runner) currentBroker() *child {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.broker
}

// output opens (once) the log file name in the history directory.
func (r *runner) output(name string) (io.Writer, error) {
	if f := r.outputs[name]; f != nil {
		return f, nil
	}
	f, err := os.OpenFile(filepath.Join(r.o.Dir, name), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	r.outputs[name] = f
	return f, nil
}

// startBroker starts (or restarts, on the same port and data) the
// harness's own broker and waits until it takes clients.
func (r *runner) startBroker() error {
	if r.port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		r.port = l.Addr().(*net.TCPAddr).Port
		_ = l.Close() // a free port, picked for the broker
		r.url = "nats://127.0.0.1:" + strconv.Itoa(r.port)
	}
	out, err := r.output("broker.log")
	if err != nil {
		return err
	}
	argv := append(append([]string{}, r.o.Command...), "broker", "--port", strconv.Itoa(r.port), "--data-dir", filepath.Join(r.o.Dir, "broker"))
	b, err := startChild("broker", argv, nil, out)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		nc, err := nats.Connect(r.url, nats.Timeout(time.Second))
		if err == nil {
			nc.Close()
			break
		}
		if b.exited() || time.Now().After(deadline) {
			b.stop(time.Second)
			return fmt.Errorf("torture: the broker did not start (%s): %s", b.exit, b.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.mu.Lock()
	r.broker = b
	r.mu.Unlock()
	return nil
}

// startPool starts "forq pool" with the harness's handlers.
func (r *runner) startPool() error {
	out, err := r.output("pool.log")
	if err != nil {
		return err
	}
	argv := append(append([]string{}, r.o.Command...), "pool", "--workers", strconv.Itoa(r.o.Workers), "--queue", r.o.Queue)
	argv = append(argv, r.o.PoolArgs...)
	p, err := startChild("pool", argv, []string{"FORQ_URL=" + r.url, EnvDir + "=" + r.o.Dir}, out)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.pool = p
	r.mu.Unlock()
	return nil
}

// poll reads what the workers appended since the last poll.
func (r *runner) poll() {
	err := r.tail.poll(func(e Event) {
		switch e.Ev {
		case EvEnd:
			if _, ok := r.done[e.ID]; !ok && e.Outcome == OutcomeOK {
				r.done[e.ID] = e.T
			}
		case EvWorker:
			r.ready[e.PID] = true
		}
	})
	if err != nil {
		r.log.Warn("torture: reading the history", "err", err)
	}
}

// poolGone reports whether the pool ended by itself, and records how.
func (r *runner) poolGone() bool {
	p := r.currentPool()
	if p.killed.Load() || !p.exited() {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.exited == "" {
		r.exited = p.exit + "; its last output:\n" + p.out.String()
	}
	return true
}

// waitReady waits until the pool has o.Workers workers with the
// harness's handlers.
func (r *runner) waitReady(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		r.poll()
		n := 0
		for _, pid := range Children(r.currentPool().pid) {
			if r.ready[pid] {
				n++
			}
		}
		if n >= r.o.Workers {
			return nil
		}
		if r.poolGone() {
			return fmt.Errorf("torture: the pool exited before its workers were ready: %s", r.exited)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("torture: %d of %d workers ready after %s; the pool's output:\n%s", n, r.o.Workers, d, r.currentPool().out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// consumer finds the queue's consumer, which the pool declares.
func (r *runner) consumer(ctx context.Context) (jetstream.Consumer, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := r.js.Consumer(ctx, forq.StreamTasks, wire.ConsumerName(r.o.Queue))
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("torture: the consumer of queue %s: %w", r.o.Queue, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// backlog is the queue's tasks waiting for a first delivery, and those
// delivered and not yet acknowledged; ok is false when the broker did
// not answer.
func (r *runner) backlog(ctx context.Context, c jetstream.Consumer) (pending, inFlight uint64, ok bool) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil {
		return 0, 0, false
	}
	return info.NumPending, uint64(info.NumAckPending), true
}

// phase enqueues n tasks and injects the faults (for PhaseFaults) until
// none is left waiting for a first delivery, and measures the
// throughput meanwhile.
func (r *runner) phase(ctx context.Context, c jetstream.Consumer, phase string, n int, w *watcher) (Phase, error) {
	start := time.Now()
	ids := map[string]bool{}
	next := 0
	add := func(k int) error {
		got, err := r.enqueue(ctx, phase, next, k)
		next += k
		for _, id := range got {
			ids[id] = true
		}
		if ctx.Err() != nil {
			return nil //nolint:nilerr // cut short: the phase ends with what it enqueued
		}
		return err
	}
	if err := add(n); err != nil {
		return Phase{}, err
	}
	fctx, stopFaults := context.WithCancel(ctx)
	var faults sync.WaitGroup
	if phase == PhaseFaults {
		r.startFaults(fctx, &faults, w)
		for i := range r.o.Phantom {
			r.record(fmt.Sprintf("%s-phantom-%06d", r.nonce, i), phase)
		}
	}
	defer func() { stopFaults(); faults.Wait() }()
	lastLog := time.Now()
	for {
		time.Sleep(100 * time.Millisecond)
		r.poll()
		if ctx.Err() != nil || r.poolGone() {
			break
		}
		pending, _, ok := r.backlog(ctx, c)
		if !ok {
			continue // the broker is down, or busy
		}
		if phase == PhaseFaults && time.Since(start) < r.o.Duration && pending < uint64(max(n/4, 100)) {
			if err := add(n); err != nil {
				return Phase{}, err
			}
			continue
		}
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			r.log.Info("torture: progress", "phase", phase, "completed", r.completed(ids), "enqueued", len(ids), "pending", pending)
		}
		if pending == 0 {
			break
		}
	}
	end := time.Now()
	stopFaults()
	faults.Wait()
	p := Phase{Tasks: len(ids), Seconds: end.Sub(start).Seconds()}
	for id := range ids {
		if t, ok := r.done[id]; ok && !t.After(end) {
			p.Completed++
		}
	}
	if p.Seconds > 0 {
		p.PerSec = float64(p.Completed) / p.Seconds
	}
	return p, nil
}

func (r *runner) completed(ids map[string]bool) int {
	n := 0
	for id := range ids {
		if _, ok := r.done[id]; ok {
			n++
		}
	}
	return n
}

// enqueue enqueues tasks first..first+n-1 of phase in batches, records
// each one acknowledged, and returns their IDs. A batch whose enqueue
// fails (the broker restarting) is sent again with the same IDs, which
// the broker's duplicate window makes safe, for up to a minute.
func (r *runner) enqueue(ctx context.Context, phase string, first, n int) ([]string, error) {
	const batch = 1000
	var ids []string
	for off := 0; off < n; off += batch {
		tasks := make([]forq.Task, min(batch, n-off))
		for i := range tasks {
			tasks[i] = forq.Task{ID: fmt.Sprintf("%s-%s-%06d", r.nonce, phase, first+off+i), Queue: r.o.Queue, Type: r.typ, Payload: r.work}
		}
		deadline := time.Now().Add(time.Minute)
		for len(tasks) > 0 {
			infos, err := r.p.EnqueueMany(ctx, tasks)
			var be *producer.BatchError
			var again []forq.Task
			switch {
			case err == nil:
				for _, in := range infos {
					ids = append(ids, in.ID)
					r.record(in.ID, phase)
				}
			case errors.As(err, &be):
				for i, e := range be.Errs {
					if e == nil {
						ids = append(ids, infos[i].ID)
						r.record(infos[i].ID, phase)
					} else {
						again = append(again, tasks[i])
					}
				}
			default:
				again = tasks
			}
			tasks = again
			if len(tasks) > 0 {
				if ctx.Err() != nil {
					return ids, ctx.Err()
				}
				if time.Now().After(deadline) {
					r.log.Warn("torture: gave up enqueueing", "tasks", len(tasks), "err", err)
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
		}
	}
	return ids, nil
}

// record records task id as acknowledged.
func (r *runner) record(id, phase string) {
	r.enqueued[id] = true
	if err := r.enqLog.Append(Event{Ev: EvEnqueued, ID: id, Phase: phase}); err != nil {
		r.log.Warn("torture: recording an enqueue", "err", err)
	}
}

// every calls f at intervals drawn between 2/3 and 4/3 of mean, until
// ctx is done.
func every(ctx context.Context, wg *sync.WaitGroup, mean time.Duration, f func(context.Context)) {
	if mean <= 0 {
		return
	}
	wg.Go(func() {
		for {
			if sleep.For(ctx, mean*2/3+rand.N(mean*2/3+1)) != nil {
				return
			}
			f(ctx)
		}
	})
}

// startFaults starts the injectors the options ask for.
func (r *runner) startFaults(ctx context.Context, wg *sync.WaitGroup, w *watcher) {
	every(ctx, wg, r.o.KillEvery, func(context.Context) {
		if _, err := r.inject.KillWorker(r.currentPool().pid); err != nil && !errors.Is(err, ErrNoWorker) {
			r.log.Warn("torture: kill", "err", err)
		}
	})
	every(ctx, wg, r.o.FreezeEvery, func(ctx context.Context) {
		if _, err := r.inject.FreezeWorker(ctx, r.currentPool().pid, r.o.FreezeFor); err != nil && !errors.Is(err, ErrNoWorker) {
			r.log.Warn("torture: freeze", "err", err)
		}
	})
	every(ctx, wg, r.o.PoolKillEvery, func(context.Context) {
		old := r.currentPool()
		for _, pid := range Children(old.pid) {
			w.track(pid)
		}
		old.killed.Store(true)
		if err := r.inject.KillPool(old.pid); err != nil {
			r.log.Warn("torture: pool kill", "err", err)
			return
		}
		<-old.done
		if err := r.startPool(); err != nil {
			r.log.Warn("torture: restart the pool", "err", err)
		}
	})
	every(ctx, wg, r.o.BrokerKillEvery, func(context.Context) {
		old := r.currentBroker()
		old.killed.Store(true)
		if err := r.inject.StopBroker(old.pid, syscall.SIGKILL); err != nil {
			r.log.Warn("torture: broker kill", "err", err)
			return
		}
		<-old.done
		if err := r.startBroker(); err != nil {
			r.log.Warn("torture: restart the broker", "err", err)
			return
		}
		_ = r.inject.BrokerUp(r.currentBroker().pid)
	})
}

// drain waits until every acknowledged task completed and the queue is
// empty, or nothing is left to run (the queue empty for 3s), or timeout;
// it reports whether every task completed.
func (r *runner) drain(ctx context.Context, c jetstream.Consumer, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	var emptySince time.Time
	for {
		r.poll()
		all := r.allDone()
		pending, inFlight, ok := r.backlog(ctx, c)
		empty := ok && pending == 0 && inFlight == 0
		if empty && all {
			return true
		}
		switch {
		case !empty:
			emptySince = time.Time{}
		case emptySince.IsZero():
			emptySince = time.Now()
		case time.Since(emptySince) > 3*time.Second+r.o.Work:
			return all
		}
		if ctx.Err() != nil || time.Now().After(deadline) || r.poolGone() {
			return all
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// allDone reports whether every task recorded as enqueued completed.
func (r *runner) allDone() bool {
	for id := range r.enqueued {
		if _, ok := r.done[id]; !ok {
			return false
		}
	}
	return true
}

// locate says where each lost task ended: dead-lettered, and why, or
// not, and whether the queue still holds tasks.
func (r *runner) locate(ctx context.Context, lost []Lost) {
	if len(lost) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var dead []admin.DeadLetter
	in, err := admin.New(ctx, r.nc, admin.Config{})
	if err == nil {
		dead, err = in.DeadLetters(ctx, r.o.Queue)
	}
	if err != nil {
		r.log.Warn("torture: looking for lost tasks among the dead letters", "err", err)
	}
	elsewhere := "not among the dead letters"
	if r.queued > 0 {
		elsewhere += fmt.Sprintf("; the queue still holds %d tasks", r.queued)
	}
	byID := map[string]admin.DeadLetter{}
	for _, d := range dead {
		byID[d.ID] = d
	}
	for i := range lost {
		if d, ok := byID[lost[i].ID]; ok {
			lost[i].Where = fmt.Sprintf("dead-lettered after %d deliveries: %s", d.Attempts, d.Error)
		} else {
			lost[i].Where = elsewhere
		}
	}
}

// cleanQueue removes the queue's consumers and tasks from a broker the
// harness does not own.
func (r *runner) cleanQueue() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := r.js.Stream(ctx, forq.StreamTasks)
	if err != nil {
		return
	}
	for _, p := range forq.Priorities {
		_ = s.DeleteConsumer(ctx, wire.LevelConsumerName(r.o.Queue, p))
		_ = s.Purge(ctx, jetstream.WithPurgeSubject(wire.LevelSubject(r.o.Queue, p)))
	}
}
