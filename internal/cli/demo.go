package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/sleep"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/lock"
	"github.com/forqhq/forq/pool"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DemoCmd is "forq demo": the multiprocessing tutorial's examples, each
// with real OS processes, over an embedded broker of its own where they
// share something.
type DemoCmd struct {
	Fork      DemoForkCmd      `cmd:"" help:"os.fork(): a parent and a child process, each printing its PID and the other's."`
	ForkChild DemoForkChildCmd `cmd:"" hidden:"" help:"The child process of the fork demo."`

	Queue       DemoQueueCmd       `cmd:"" help:"Queue: a writer process puts A, B, C; a reader process gets them; the parent terminates the reader."`
	QueueWriter DemoQueueWriterCmd `cmd:"" hidden:"" help:"The writer process of the queue demo."`
	QueueReader DemoQueueReaderCmd `cmd:"" hidden:"" help:"The reader process of the queue demo."`

	Process      DemoProcessCmd      `cmd:"" help:"Process: start one child process for one task and join it."`
	ProcessChild DemoProcessChildCmd `cmd:"" hidden:"" help:"The child process of the process demo."`
	Pool         DemoPoolCmd         `cmd:"" help:"Pool(4): five long_time_task tasks over four worker processes, then close and join."`
	PoolWorker   DemoPoolWorkerCmd   `cmd:"" hidden:"" help:"A worker process of the pool demo."`
	Subprocess   DemoSubprocessCmd   `cmd:"" help:"subprocess.call: 'ping -c 4 127.0.0.1' as an exec task on a worker process, its output streamed as it comes; prints its exit code."`

	Lock      DemoLockCmd      `cmd:"" help:"Lock: processes add to a shared balance, first without a lock (updates are lost), then with lock.acquire() / try / finally: release()."`
	LockChild DemoLockChildCmd `cmd:"" hidden:"" help:"A process of the lock demo."`
}

const demoQueue = "demo"

// demo is a demo's private embedded broker, in a temporary directory, and
// the parent's connection and producer on it.
type demo struct {
	s   *broker.Server
	url string
	nc  *nats.Conn
	p   *producer.Producer
	dir string
	log *slog.Logger
}

// startDemo starts a demo's broker and connects to it; stop undoes it.
func startDemo(ctx context.Context, log *slog.Logger) (*demo, error) {
	dir, err := os.MkdirTemp("", "forq-demo-")
	if err != nil {
		return nil, err
	}
	d := &demo{dir: dir, log: log}
	if d.s, err = broker.New(broker.Options{DataDir: dir}); err != nil {
		removeTemp(log, dir)
		return nil, err
	}
	d.s.Start()
	d.url = d.s.ClientURL()
	if err = d.s.WaitReady(0); err == nil {
		d.nc, err = nats.Connect(d.url)
	}
	if err == nil {
		d.p, err = producer.New(ctx, d.nc, producer.Config{})
	}
	if err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

func (d *demo) stop() {
	if d.nc != nil {
		d.nc.Close()
	}
	d.s.Shutdown()
	removeTemp(d.log, d.dir)
}

// self returns a command that runs this forq binary with args, its output
// going to env's.
func self(env *Env, args ...string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = env.Stdout, env.Stderr
	cmd.Env = os.Environ()
	return cmd, nil
}

// DemoForkCmd is "forq demo fork": the tutorial's os.fork() example.
type DemoForkCmd struct{}

// Run starts the child and prints the parent's side of the dialogue.
func (c *DemoForkCmd) Run(env *Env) error {
	fmt.Fprintf(env.Stdout, "Process %d start!\n", os.Getpid())
	// pid = os.fork(): a Go program cannot fork itself while it runs, so
	// the child is this program started again, as its child process.
	child, err := self(env, "demo", "fork-child")
	if err != nil {
		return err
	}
	if err := child.Start(); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "I'm parent process %d and my child is %d.\n", os.Getpid(), child.Process.Pid)
	if err := child.Wait(); err != nil {
		return fmt.Errorf("child: %w", err)
	}
	return nil
}

// DemoForkChildCmd is the child of the fork demo.
type DemoForkChildCmd struct{}

// Run prints the child's side of the dialogue.
func (c *DemoForkChildCmd) Run(env *Env) error {
	fmt.Fprintf(env.Stdout, "I'm child process %d and my parent is %d.\n", os.Getpid(), os.Getppid())
	return nil
}

// DemoQueueCmd is "forq demo queue".
type DemoQueueCmd struct{}

// Run starts the broker, the writer and the reader, joins the writer, waits
// until the reader has got everything, then terminates the reader.
func (c *DemoQueueCmd) Run(env *Env) error {
	ctx, stop := signalContext()
	defer stop()
	d, err := startDemo(ctx, env.Log)
	if err != nil {
		return err
	}
	defer d.stop()
	fmt.Fprintf(env.Stdout, "Parent process %d: broker at %s.\n", os.Getpid(), d.url)
	pw, err := self(env, "--log-level=warn", "demo", "queue-writer", "--url", d.url)
	if err != nil {
		return err
	}
	pr, err := self(env, "--log-level=warn", "demo", "queue-reader", "--url", d.url)
	if err != nil {
		return err
	}
	// pw.start(); pr.start()
	if err := pw.Start(); err != nil {
		return fmt.Errorf("start writer: %w", err)
	}
	if err := pr.Start(); err != nil {
		_ = pw.Process.Kill()
		_ = pw.Wait()
		return fmt.Errorf("start reader: %w", err)
	}
	// pw.join()
	werr := pw.Wait()
	// The queue is durable, so unlike the tutorial's parent this one can
	// wait until the reader has taken everything before it terminates it.
	if werr == nil {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		d.drained(wctx)
		cancel()
	}
	// pr.terminate()
	_ = pr.Process.Signal(syscall.SIGTERM)
	rerr := pr.Wait()
	if werr != nil {
		return fmt.Errorf("writer: %w", werr)
	}
	if rerr != nil {
		return fmt.Errorf("reader: %w", rerr)
	}
	fmt.Fprintln(env.Stdout, "Reader terminated; all processes done.")
	return nil
}

// drained waits until the demo queue has nothing pending or unacked, or
// ctx ends.
func (d *demo) drained(ctx context.Context) {
	js, err := jetstream.New(d.nc)
	if err != nil {
		return
	}
	for ctx.Err() == nil {
		c, err := js.Consumer(ctx, forq.StreamTasks, wire.ConsumerName(demoQueue))
		if err == nil {
			if i, err := c.Info(ctx); err == nil && i.NumPending == 0 && i.NumAckPending == 0 {
				return
			}
		}
		_ = sleep.For(ctx, 20*time.Millisecond)
	}
}

// DemoQueueWriterCmd is the writer: it puts A, B and C with random pauses.
type DemoQueueWriterCmd struct {
	URL string `required:"" help:"Broker URL."`
}

// Run writes the values.
func (c *DemoQueueWriterCmd) Run(env *Env) error {
	fmt.Fprintf(env.Stdout, "Process to write: %d (parent %d)\n", os.Getpid(), os.Getppid())
	nc, err := nats.Connect(c.URL)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx := context.Background()
	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		return err
	}
	for _, v := range []string{"A", "B", "C"} {
		fmt.Fprintf(env.Stdout, "Put %s to queue...\n", v)
		if _, err := p.Enqueue(ctx, forq.Task{Queue: demoQueue, Type: "value", Payload: []byte(v)}); err != nil {
			return err
		}
		time.Sleep(rand.N(time.Second)) // time.sleep(random.random())
	}
	return nil
}

// DemoQueueReaderCmd is the reader: an endless get loop.
type DemoQueueReaderCmd struct {
	URL string `required:"" help:"Broker URL."`
}

// Run reads values until terminated.
func (c *DemoQueueReaderCmd) Run(env *Env) error {
	fmt.Fprintf(env.Stdout, "Process to read: %d (parent %d)\n", os.Getpid(), os.Getppid())
	return demoWorker(env, c.URL, 0, "value", func(t *consumer.Task) {
		fmt.Fprintf(env.Stdout, "Get %s from queue.\n", t.Payload)
	})
}

// DemoProcessCmd is "forq demo process": the tutorial's Process example.
type DemoProcessCmd struct{}

// Run starts one worker process for one task and joins it.
func (c *DemoProcessCmd) Run(env *Env) error {
	ctx, stop := signalContext()
	defer stop()
	d, err := startDemo(ctx, env.Log)
	if err != nil {
		return err
	}
	defer d.stop()
	fmt.Fprintf(env.Stdout, "Parent process %d.\n", os.Getpid())
	if _, err := d.p.Enqueue(ctx, forq.Task{Queue: demoQueue, Type: "run_proc", Payload: []byte("test")}); err != nil {
		return err
	}
	p, err := self(env, "--log-level=warn", "demo", "process-child", "--url", d.url)
	if err != nil {
		return err
	}
	fmt.Fprintln(env.Stdout, "Child process will start.")
	if err := p.Start(); err != nil { // p.start()
		return err
	}
	if err := p.Wait(); err != nil { // p.join()
		return fmt.Errorf("child: %w", err)
	}
	fmt.Fprintln(env.Stdout, "Child process end.")
	return nil
}

// DemoProcessChildCmd is the child of the process demo: it runs one task.
type DemoProcessChildCmd struct {
	URL string `required:"" help:"Broker URL."`
}

// Run runs one run_proc task and exits.
func (c *DemoProcessChildCmd) Run(env *Env) error {
	return demoWorker(env, c.URL, 1, "run_proc", func(t *consumer.Task) {
		fmt.Fprintf(env.Stdout, "Run child process %s (%d)...\n", t.Payload, os.Getpid())
	})
}

// DemoPoolCmd is "forq demo pool": the tutorial's Pool(4) example.
type DemoPoolCmd struct {
	Workers int `short:"n" default:"4" help:"Worker processes (the tutorial's Pool(4))."`
	Tasks   int `default:"5" help:"long_time_task tasks to run."`
}

// errPoolStopped: the pool's Run returned before the demo closed it.
var errPoolStopped = errors.New("the pool stopped")

// Run starts a pool, applies the tasks, then closes and joins it.
func (c *DemoPoolCmd) Run(env *Env) error {
	if c.Workers < 1 || c.Tasks < 0 {
		return usageErr("--workers must be at least 1 and --tasks not negative")
	}
	ctx, cancel := signalContext()
	defer cancel()
	d, err := startDemo(ctx, env.Log)
	if err != nil {
		return err
	}
	defer d.stop()
	fmt.Fprintf(env.Stdout, "Parent process %d.\n", os.Getpid())
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// The queue is closed (paused) until every worker of the pool waits
	// for a task, as the tutorial's Pool(4) has four processes running
	// when it hands out tasks: tasks 0 to 3 start at once in four
	// processes, task 4 once one of them is done.
	in, err := admin.New(ctx, d.nc, admin.Config{})
	if err != nil {
		return err
	}
	if _, err := in.Pause(ctx, demoQueue, admin.PauseForever, 0); err != nil {
		return err
	}
	// p = Pool(4)
	sup, err := pool.New(pool.Config{
		Size:     c.Workers,
		Command:  []string{exe, "--log-level=warn", "demo", "pool-worker", "--url", d.url},
		Stdout:   env.Stdout,
		Stderr:   env.Stderr,
		NoPrefix: true,
	})
	if err != nil {
		return err
	}
	poolCtx, closePool := context.WithCancel(ctx)
	defer closePool()
	done := make(chan struct{})
	var runErr error
	go func() { runErr = sup.Run(poolCtx); close(done) }()
	err = c.apply(ctx, env, d, in, done)
	closePool() // p.close(); p.join()
	<-done
	switch {
	case errors.Is(err, errPoolStopped):
		return fmt.Errorf("%w early: %v", err, runErr)
	case err != nil:
		return err
	case runErr != nil:
		return runErr
	}
	fmt.Fprintln(env.Stdout, "All subprocesses done.")
	return nil
}

// apply enqueues the tasks, says so, opens the queue (with in) once every
// worker waits for a task, and returns once the queue is drained. done is
// closed if the pool stops meanwhile.
func (c *DemoPoolCmd) apply(ctx context.Context, env *Env, d *demo, in *admin.Inspector, done <-chan struct{}) error {
	for i := range c.Tasks { // p.apply_async(long_time_task, args=(i,))
		if _, err := d.p.Enqueue(ctx, forq.Task{Queue: demoQueue, Type: "long_time_task", Payload: []byte(strconv.Itoa(i))}); err != nil {
			return err
		}
	}
	fmt.Fprintln(env.Stdout, "Waiting for all subprocesses done...")
	js, err := jetstream.New(d.nc)
	if err != nil {
		return err
	}
	cons, err := js.Consumer(ctx, forq.StreamTasks, wire.ConsumerName(demoQueue))
	if err != nil {
		return err
	}
	open := false
	for {
		i, err := cons.Info(ctx)
		switch {
		case err != nil:
		case !open && i.NumWaiting >= c.Workers:
			if err := in.Resume(ctx, demoQueue); err != nil {
				return err
			}
			open = true
		case open && i.NumPending == 0 && i.NumAckPending == 0:
			return nil
		}
		select {
		case <-done:
			return errPoolStopped
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// DemoPoolWorkerCmd is a worker of the pool demo.
type DemoPoolWorkerCmd struct {
	URL string `required:"" help:"Broker URL."`
}

// Run runs long_time_task tasks until terminated: each sleeps a random 0
// to 3 s, printing as the tutorial's does.
func (c *DemoPoolWorkerCmd) Run(env *Env) error {
	return demoWorker(env, c.URL, 0, "long_time_task", nil)
}

// demoWorker runs a worker of one task type on the demo queue until a
// signal. With maxTasks > 0 it exits 0 after that many tasks. Each task
// calls do, or, if do is nil, is the tutorial's long_time_task.
func demoWorker(env *Env, url string, maxTasks int, typ string, do func(*consumer.Task)) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := signalContext()
	defer stop()
	w, err := consumer.New(ctx, nc, consumer.Config{Queues: []string{demoQueue}, MaxTasks: maxTasks, Logger: env.Log})
	if err != nil {
		return err
	}
	w.HandleFunc(typ, func(ctx context.Context, t *consumer.Task) ([]byte, error) {
		if do != nil {
			do(t)
			return nil, nil
		}
		fmt.Fprintf(env.Stdout, "Run task %s (%d)...\n", t.Payload, os.Getpid())
		start := time.Now()
		if err := sleep.For(ctx, rand.N(3*time.Second)); err != nil { // time.sleep(random.random() * 3)
			return nil, err
		}
		fmt.Fprintf(env.Stdout, "Task %s runs %0.2f seconds.\n", t.Payload, time.Since(start).Seconds())
		return nil, nil
	})
	_ = pool.Ready() // under a pool: this worker runs (a no-op otherwise)
	err = w.Run(ctx)
	if errors.Is(err, consumer.ErrMaxTasks) {
		return nil
	}
	return err
}

// DemoSubprocessCmd is "forq demo subprocess": the tutorial's
// subprocess.call example, as an exec task.
type DemoSubprocessCmd struct {
	Command []string `arg:"" optional:"" help:"The command to call, after '--' (default: ping -c 4 127.0.0.1; uname -a where ping is not installed)."`
}

// Run runs the command through the queue on a worker process, printing
// its output as the command writes it, and then its exit code.
func (c *DemoSubprocessCmd) Run(env *Env) error {
	argv := c.argv(env)
	ctx, cancel := signalContext()
	defer cancel()
	d, err := startDemo(ctx, env.Log)
	if err != nil {
		return err
	}
	defer d.stop()
	w, err := self(env, "--log-level=warn", "work", "--url", d.url, "--queue", demoQueue, "--allow-exec", "--exec-allow", argv[0])
	if err != nil {
		return err
	}
	if err := w.Start(); err != nil {
		return err
	}
	defer func() { _ = w.Process.Signal(syscall.SIGTERM); _ = w.Wait() }()
	// The worker publishes the output of a task that asks for it on the
	// task's output subjects: subscribed before the task is enqueued, the
	// demo gets all of it.
	id := forq.NewID()
	chunks := make(chan *nats.Msg, 4096)
	sub, err := d.nc.ChanSubscribe(wire.OutputSubject(id, "*"), chunks)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }() // the demo's connection closes next, which ends it anyway
	payload, _ := json.Marshal(forq.ExecSpec{Argv: argv, Stream: true})
	fmt.Fprintf(env.Stdout, "$ %s\n", strings.Join(argv, " "))
	if _, err := d.p.Enqueue(ctx, forq.Task{ID: id, Queue: demoQueue, Type: forq.TypeExec, Payload: payload, MaxAttempts: 1, Record: true}); err != nil {
		return err
	}
	r, streamed, err := call(ctx, env, d, id, chunks) // r = subprocess.call([...])
	if err != nil {
		return err
	}
	var x forq.ExecResult
	if err := json.Unmarshal(r.Result, &x); err != nil {
		return fmt.Errorf("task %s %s: %s", r.ID, r.State, r.Error)
	}
	if streamed != x.Stdout && !x.StdoutTruncated {
		fmt.Fprintf(env.Stderr, "forq: the stream missed some of the output; the worker recorded:\n%s", x.Stdout)
	}
	fmt.Fprintf(env.Stdout, "Exit code: %d (run by worker process %d)\n", x.ExitCode, r.WorkerPID)
	return nil
}

// argv returns the command to call.
func (c *DemoSubprocessCmd) argv(env *Env) []string {
	argv := c.Command
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) > 0 {
		return argv
	}
	if _, err := exec.LookPath("ping"); err != nil {
		fmt.Fprintln(env.Stdout, "ping is not installed here (on Debian: apt-get install iputils-ping); running uname -a instead.")
		return []string{"uname", "-a"}
	}
	return []string{"ping", "-c", "4", "127.0.0.1"}
}

// call writes exec task id's output as the chunks of it come, stdout to
// stdout and stderr to stderr, until the task's result is in, and returns
// the result and the stdout written.
func call(ctx context.Context, env *Env, d *demo, id string, chunks <-chan *nats.Msg) (*forq.Result, string, error) {
	type waited struct {
		r   *forq.Result
		err error
	}
	res := make(chan waited, 1)
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() {
		r, err := d.p.Wait(wctx, id)
		if err == nil {
			// The worker published its chunks before it wrote the result,
			// on one connection: the server had passed them all to this
			// one before it answers a ping sent now.
			err = d.nc.Flush()
		}
		res <- waited{r, err}
	})
	var stdout strings.Builder
	write := func(m *nats.Msg) {
		// A write to the terminal that fails has nobody left to tell, as
		// for fmt.Fprint (see .golangci.yml).
		if m.Subject == wire.OutputSubject(id, "stderr") {
			_, _ = env.Stderr.Write(m.Data)
			return
		}
		_, _ = env.Stdout.Write(m.Data)
		stdout.Write(m.Data)
	}
	for {
		select {
		case m := <-chunks:
			write(m)
		case w := <-res:
			for len(chunks) > 0 {
				write(<-chunks)
			}
			return w.r, stdout.String(), w.err
		}
	}
}

// DemoLockCmd is "forq demo lock": the tutorial's lock.acquire() / try /
// finally: lock.release(), across processes.
type DemoLockCmd struct {
	Processes int `short:"n" default:"2" help:"Processes that change the balance at the same time."`
	Times     int `default:"50" help:"How many times each process adds 1 to the balance."`
}

// The demo's shared balance, a key in a KV bucket of its broker, and the
// subjects on which its processes start together.
const (
	demoBucket    = "forq_demo"
	demoBalance   = "balance"
	demoLockReady = "demo.lock.ready"
	demoLockGo    = "demo.lock.go"
)

// Run runs the processes twice, without and with the lock, and prints
// the balance each time.
func (c *DemoLockCmd) Run(env *Env) error {
	if c.Processes < 1 || c.Processes > 64 || c.Times < 1 || c.Times > 10000 {
		return usageErr("--processes must be 1 to 64, --times 1 to 10000")
	}
	ctx, cancel := signalContext()
	defer cancel()
	d, err := startDemo(ctx, env.Log)
	if err != nil {
		return err
	}
	defer d.stop()
	js, err := jetstream.New(d.nc)
	if err != nil {
		return err
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: demoBucket, Storage: jetstream.MemoryStorage})
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "Parent process %d: balance = 0, a key of the broker's KV bucket %s.\n", os.Getpid(), demoBucket)
	want := c.Processes * c.Times
	for _, locked := range []bool{false, true} {
		if locked {
			fmt.Fprintf(env.Stdout, "With the lock: %d processes each add 1 to the balance %d times, each time as\n"+
				"  lock.acquire(); try: change_it() finally: lock.release()\n", c.Processes, c.Times)
		} else {
			fmt.Fprintf(env.Stdout, "Without a lock: %d processes each add 1 to the balance %d times (change_it: read it, then write it plus 1).\n", c.Processes, c.Times)
		}
		if _, err := kv.Put(ctx, demoBalance, []byte("0")); err != nil {
			return err
		}
		if err := c.round(ctx, env, d, locked); err != nil {
			return err
		}
		e, err := kv.Get(ctx, demoBalance)
		if err != nil {
			return err
		}
		got, _ := strconv.Atoi(string(e.Value()))
		if got == want {
			fmt.Fprintf(env.Stdout, "balance = %d, want %d: no update lost.\n", got, want)
		} else {
			fmt.Fprintf(env.Stdout, "balance = %d, want %d: %d updates lost (another process wrote between a read and its write).\n", got, want, want-got)
		}
	}
	return nil
}

// round runs the processes of one round and waits for them: each says
// when it is ready, and they start changing the balance together.
func (c *DemoLockCmd) round(ctx context.Context, env *Env, d *demo, locked bool) error {
	ready, err := d.nc.SubscribeSync(demoLockReady)
	if err != nil {
		return err
	}
	defer func() { _ = ready.Unsubscribe() }() // a failure leaves a subscription the demo's closing connection ends
	args := []string{"--log-level=warn", "demo", "lock-child", "--url", d.url, "--times", strconv.Itoa(c.Times)}
	if locked {
		args = append(args, "--lock")
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			if p.ProcessState == nil { // not waited for: the round failed
				_ = p.Process.Kill()
				_ = p.Wait()
			}
		}
	}()
	for range c.Processes {
		p, err := self(env, args...)
		if err != nil {
			return err
		}
		if err := p.Start(); err != nil {
			return err
		}
		procs = append(procs, p)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for range c.Processes {
		if _, err := ready.NextMsgWithContext(wctx); err != nil {
			return fmt.Errorf("the processes did not start: %w", err)
		}
	}
	if err := d.nc.Publish(demoLockGo, nil); err != nil {
		return err
	}
	for _, p := range procs {
		if err := p.Wait(); err != nil {
			return fmt.Errorf("process %d: %w", p.Process.Pid, err)
		}
	}
	return nil
}

// DemoLockChildCmd is a process of the lock demo.
type DemoLockChildCmd struct {
	URL   string `required:"" help:"Broker URL."`
	Times int    `required:"" help:"How many times to add 1 to the balance."`
	Lock  bool   `help:"Hold the lock around each change."`
}

// Run waits for the start, then changes the balance.
func (c *DemoLockChildCmd) Run(env *Env) error {
	nc, err := nats.Connect(c.URL)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := signalContext()
	defer stop()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	kv, err := js.KeyValue(ctx, demoBucket)
	if err != nil {
		return err
	}
	m, err := lock.New(ctx, js, demoBalance, lock.Options{})
	if err != nil {
		return err
	}
	start, err := nc.SubscribeSync(demoLockGo)
	if err == nil {
		err = nc.Flush() // the subscription is in place before we say we are ready
	}
	if err == nil {
		err = nc.Publish(demoLockReady, nil)
	}
	if err == nil {
		_, err = start.NextMsgWithContext(ctx)
	}
	if err != nil {
		return err
	}
	how := "without a lock"
	if c.Lock {
		how = "with the lock"
	}
	fmt.Fprintf(env.Stdout, "Process %d changes the balance %d times %s.\n", os.Getpid(), c.Times, how)
	for range c.Times {
		if !c.Lock {
			err = changeIt(ctx, kv)
		} else if err = m.Lock(ctx); err == nil { // lock.acquire()
			err = lockedChange(ctx, kv, m)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// lockedChange is the tutorial's try: change_it() finally: lock.release().
func lockedChange(ctx context.Context, kv jetstream.KeyValue, m *lock.Mutex) (err error) {
	defer func() {
		if uerr := m.Unlock(context.WithoutCancel(ctx)); err == nil {
			err = uerr
		}
	}()
	return changeIt(ctx, kv)
}

// changeIt adds 1 to the balance as the tutorial's change_it changes it: a
// read, then a write of the new value. Between the two another process
// may write; without a lock, its update is lost.
func changeIt(ctx context.Context, kv jetstream.KeyValue) error {
	e, err := kv.Get(ctx, demoBalance)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(string(e.Value()))
	if err != nil {
		return fmt.Errorf("balance %q: %w", e.Value(), err)
	}
	// The moment the tutorial's thread may be switched out: here another
	// process reads the same balance.
	if err := sleep.For(ctx, time.Millisecond); err != nil {
		return err
	}
	_, err = kv.Put(ctx, demoBalance, []byte(strconv.Itoa(n+1)))
	return err
}
