package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/forqhq/forq/pool"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/broker"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DemoCmd is "forq demo": the multiprocessing tutorial's examples, each
// with real OS processes over an embedded broker of its own.
type DemoCmd struct {
	Queue       DemoQueueCmd       `cmd:"" help:"Queue: a writer process puts A, B, C; a reader process gets them; the parent terminates the reader."`
	QueueWriter DemoQueueWriterCmd `cmd:"" hidden:"" help:"The writer process of the queue demo."`
	QueueReader DemoQueueReaderCmd `cmd:"" hidden:"" help:"The reader process of the queue demo."`

	Process      DemoProcessCmd      `cmd:"" help:"Process: start one child process for one task and join it."`
	ProcessChild DemoProcessChildCmd `cmd:"" hidden:"" help:"The child process of the process demo."`
	Pool         DemoPoolCmd         `cmd:"" help:"Pool(4): five long_time_task tasks over four worker processes, then close and join."`
	Subprocess   DemoSubprocessCmd   `cmd:"" help:"subprocess.call: 'ping -c 4 127.0.0.1' as an exec task on a worker process; prints its exit code."`
	PoolWorker   DemoPoolWorkerCmd   `cmd:"" hidden:"" help:"A worker process of the pool demo."`
}

const demoQueue = "demo"

// demoBroker starts a private embedded broker for a demo in a temporary
// directory; stop removes it.
func demoBroker() (s *broker.Server, stop func(), err error) {
	dir, err := os.MkdirTemp("", "forq-demo-")
	if err != nil {
		return nil, nil, err
	}
	s, err = broker.New(broker.Options{DataDir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	s.Start()
	if err := s.WaitReady(0); err != nil {
		s.Shutdown()
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return s, func() { s.Shutdown(); os.RemoveAll(dir) }, nil
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

// DemoQueueCmd is "forq demo queue".
type DemoQueueCmd struct{}

// Run starts the broker, the writer and the reader, joins the writer, waits
// until the reader has got everything, then terminates the reader.
func (c *DemoQueueCmd) Run(env *Env) error {
	s, stop, err := demoBroker()
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(env.Stdout, "Parent process %d: broker at %s.\n", os.Getpid(), s.ClientURL())
	pw, err := self(env, "--log-level=warn", "demo", "queue-writer", "--url", s.ClientURL())
	if err != nil {
		return err
	}
	pr, err := self(env, "--log-level=warn", "demo", "queue-reader", "--url", s.ClientURL())
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
		waitDrained(s.ClientURL(), 10*time.Second)
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

// waitDrained waits until the demo queue has nothing pending or unacked.
func waitDrained(url string, max time.Duration) {
	nc, err := nats.Connect(url)
	if err != nil {
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), max)
	defer cancel()
	for ctx.Err() == nil {
		c, err := js.Consumer(ctx, forq.StreamTasks, forq.ConsumerName(demoQueue))
		if err == nil {
			if i, err := c.Info(ctx); err == nil && i.NumPending == 0 && i.NumAckPending == 0 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
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
		time.Sleep(time.Duration(rand.Int64N(int64(time.Second))))
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
	nc, err := nats.Connect(c.URL)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, stop := signalContext()
	defer stop()
	w, err := consumer.New(ctx, nc, consumer.Config{Queues: []string{demoQueue}, Logger: env.Log})
	if err != nil {
		return err
	}
	w.HandleFunc("value", func(_ context.Context, t *consumer.Task) ([]byte, error) {
		fmt.Fprintf(env.Stdout, "Get %s from queue.\n", t.Payload)
		return nil, nil
	})
	return w.Run(ctx)
}

// DemoProcessCmd is "forq demo process": the tutorial's Process example.
type DemoProcessCmd struct{}

// Run starts one worker process for one task and joins it.
func (c *DemoProcessCmd) Run(env *Env) error {
	s, stop, err := demoBroker()
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(env.Stdout, "Parent process %d.\n", os.Getpid())
	if err := demoEnqueue(s.ClientURL(), forq.Task{Queue: demoQueue, Type: "run_proc", Payload: []byte("test")}); err != nil {
		return err
	}
	p, err := self(env, "--log-level=warn", "demo", "process-child", "--url", s.ClientURL())
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

// Run starts a pool, applies the tasks, then closes and joins it.
func (c *DemoPoolCmd) Run(env *Env) error {
	if c.Workers < 1 || c.Tasks < 0 {
		return usageErr("--workers must be at least 1 and --tasks not negative")
	}
	s, stop, err := demoBroker()
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintf(env.Stdout, "Parent process %d.\n", os.Getpid())
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := signalContext()
	defer cancel()
	backlog, err := queueBacklog(ctx, nc, []string{demoQueue}, 0, TopologyFlags{})
	if err != nil {
		return err
	}
	// p = Pool(4)
	sup, err := pool.New(pool.Config{
		Size:     c.Workers,
		Command:  []string{exe, "--log-level=warn", "demo", "pool-worker", "--url", s.ClientURL()},
		Stdout:   env.Stdout,
		Stderr:   env.Stderr,
		NoPrefix: true,
	})
	if err != nil {
		return err
	}
	poolCtx, closePool := context.WithCancel(ctx)
	defer closePool()
	runErr := make(chan error, 1)
	go func() { runErr <- sup.Run(poolCtx) }()
	// Apply the tasks once every worker waits for one, as the tutorial's
	// pool is ready when apply_async is called.
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	for ready := false; !ready; {
		if cons, err := js.Consumer(ctx, forq.StreamTasks, demoQueue); err == nil {
			if i, err := cons.Info(ctx); err == nil && i.NumWaiting >= c.Workers {
				ready = true
			}
		}
		select {
		case err := <-runErr:
			return fmt.Errorf("pool stopped before it was ready: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	for i := range c.Tasks { // p.apply_async(long_time_task, args=(i,))
		if err := demoEnqueue(s.ClientURL(), forq.Task{Queue: demoQueue, Type: "long_time_task", Payload: []byte(strconv.Itoa(i))}); err != nil {
			return err
		}
	}
	fmt.Fprintln(env.Stdout, "Waiting for all subprocesses done...")
	// p.close(); p.join(): stop the pool once the queue is drained.
	for {
		n, err := backlog(ctx)
		if err == nil && n == 0 {
			break
		}
		select {
		case err := <-runErr:
			return fmt.Errorf("pool stopped early: %v", err)
		case <-ctx.Done():
			closePool()
			return <-runErr
		case <-time.After(20 * time.Millisecond):
		}
	}
	closePool()
	if err := <-runErr; err != nil {
		return err
	}
	fmt.Fprintln(env.Stdout, "All subprocesses done.")
	return nil
}

// DemoPoolWorkerCmd is a worker of the pool demo.
type DemoPoolWorkerCmd struct {
	URL string `required:"" help:"Broker URL."`
}

// Run runs long_time_task tasks until terminated.
func (c *DemoPoolWorkerCmd) Run(env *Env) error {
	return demoWorker(env, c.URL, 0, "long_time_task", nil)
}

// demoWorker runs a worker of one task type on the demo queue. With
// maxTasks > 0 it exits 0 after that many tasks. long_time_task sleeps a
// random 0–3 s, printing as the tutorial does; other types call do.
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
		select {
		case <-time.After(time.Duration(rand.Float64() * 3 * float64(time.Second))):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		fmt.Fprintf(env.Stdout, "Task %s runs %0.2f seconds.\n", t.Payload, time.Since(start).Seconds())
		return nil, nil
	})
	err = w.Run(ctx)
	if errors.Is(err, consumer.ErrMaxTasks) {
		return nil
	}
	return err
}

func demoEnqueue(url string, t forq.Task) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	p, err := producer.New(context.Background(), nc, producer.Config{})
	if err != nil {
		return err
	}
	_, err = p.Enqueue(context.Background(), t)
	return err
}

// DemoSubprocessCmd is "forq demo subprocess": the tutorial's
// subprocess.call example, as an exec task.
type DemoSubprocessCmd struct{}

// Run runs ping through the queue on a worker process and prints its exit
// code.
func (c *DemoSubprocessCmd) Run(env *Env) error {
	argv := []string{"ping", "-c", "4", "127.0.0.1"}
	if _, err := exec.LookPath("ping"); err != nil {
		fmt.Fprintln(env.Stdout, "ping is not installed here (on Debian: apt-get install iputils-ping); running uname -a instead.")
		argv = []string{"uname", "-a"}
	}
	s, stop, err := demoBroker()
	if err != nil {
		return err
	}
	defer stop()
	w, err := self(env, "--log-level=warn", "work", "--url", s.ClientURL(), "--queue", demoQueue, "--allow-exec", "--exec-allow", argv[0])
	if err != nil {
		return err
	}
	if err := w.Start(); err != nil {
		return err
	}
	defer func() { _ = w.Process.Signal(syscall.SIGTERM); _ = w.Wait() }()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := signalContext()
	defer cancel()
	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		return err
	}
	payload, _ := json.Marshal(forq.ExecSpec{Argv: argv})
	fmt.Fprintf(env.Stdout, "$ %s\n", strings.Join(argv, " "))
	info, err := p.Enqueue(ctx, forq.Task{Queue: demoQueue, Type: forq.TypeExec, Payload: payload, MaxAttempts: 1, Record: true})
	if err != nil {
		return err
	}
	r, err := p.Wait(ctx, info.ID) // r = subprocess.call([...])
	if err != nil {
		return err
	}
	var x forq.ExecResult
	if err := json.Unmarshal(r.Result, &x); err != nil {
		return fmt.Errorf("task %s %s: %s", r.ID, r.State, r.Error)
	}
	fmt.Fprint(env.Stdout, x.Stdout)
	fmt.Fprintf(env.Stdout, "Exit code: %d (run by worker process %d)\n", x.ExitCode, r.WorkerPID)
	return nil
}
