package cli

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
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
