// Package cli implements the forq command: its subcommands, flags (each
// with a FORQ_* environment variable) and exit codes.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/forqhq/forq"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// Exit codes of the forq command.
const (
	ExitOK    = 0
	ExitError = 1 // a runtime failure: broker unreachable, task failed, ...
	ExitUsage = 2 // a bad flag, argument or input
)

// exitError carries an exit code other than ExitError out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErr marks err as a usage error (exit 2).
func usageErr(format string, args ...any) error {
	return &exitError{code: ExitUsage, err: fmt.Errorf(format, args...)}
}

// Env is what a command may touch of the outside world.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Log            *slog.Logger
}

// CLI is the forq command line.
type CLI struct {
	LogFormat string `enum:"text,json" default:"text" help:"Log format: text or json."`
	LogLevel  string `enum:"debug,info,warn,error" default:"info" help:"Least severe log level shown: debug, info, warn or error."`

	Broker  BrokerCmd  `cmd:"" help:"Run the embedded NATS broker with JetStream (the queue) in the foreground."`
	Enqueue EnqueueCmd `cmd:"" help:"Enqueue a task, or one task per line of a file."`
	Work    WorkCmd    `cmd:"" help:"Run a worker process: pull tasks and run the built-in task types (echo, sleep; exec with --allow-exec)."`
	Pool    PoolCmd    `cmd:"" help:"Run a pool of worker processes (default: one per CPU), restarting crashed ones."`
	Run     RunCmd     `cmd:"" help:"All in one: the embedded broker and a pool of workers. The quickest way to try forq."`
	Result  ResultCmd  `cmd:"" help:"Show a task's recorded result."`
	Cancel  CancelCmd  `cmd:"" help:"Cancel tasks: a queued one never starts, a running one is stopped wherever it runs."`
	Record  RecordCmd  `cmd:"" help:"Record every task of a queue (state, result), as if each were enqueued with --record; --off stops it."`
	Stats   StatsCmd   `cmd:"" help:"Show each queue (queued, running, dead, paused, done and failed in the last minute) and the workers."`
	Dead    DeadCmd    `cmd:"" help:"List, show, retry or purge dead letters: tasks that used up their attempts."`
	Pause   PauseCmd   `cmd:"" help:"Pause a queue: its workers start nothing until 'forq resume' (or --until/--for)."`
	Resume  ResumeCmd  `cmd:"" help:"Resume a paused queue."`
	Health  HealthCmd  `cmd:"" help:"Exit 0 if the broker (or a forq process's /healthz) is healthy; for scripts and docker-compose healthchecks."`
	Demo    DemoCmd    `cmd:"" help:"Run the multiprocessing tutorial's examples over the queue with real processes."`
	Bench   BenchCmd   `cmd:"" help:"Measure forq's throughput, latency and footprint, optionally beside raw JetStream."`
	// The processes forq bench starts, re-executing this binary.
	BenchWorker   BenchWorkerCmd   `cmd:"" name:"bench-worker" hidden:"" help:"A worker process of forq bench."`
	BenchProducer BenchProducerCmd `cmd:"" name:"bench-producer" hidden:"" help:"A producer process of forq bench."`

	Schedule ScheduleCmd `cmd:"" help:"Periodic tasks: add (--every or --cron), ls, rm."`
}

const description = `forq is a durable task queue on NATS JetStream: Python's multiprocessing
model (Process, Pool, Queue, subprocess) for many programs at once.

Every flag can also be set with the environment variable shown beside it.`

type exitPanic int

// Main runs the forq command with args and returns its exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) (code int) {
	var cli CLI
	parser, err := kong.New(&cli,
		kong.Name("forq"),
		kong.Description(description),
		kong.DefaultEnvars("FORQ"),
		kong.Writers(stdout, stderr),
		kong.Exit(func(c int) { panic(exitPanic(c)) }),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true, NoExpandSubcommands: true}),
	)
	if err != nil {
		fmt.Fprintf(stderr, "forq: %v\n", err)
		return ExitError
	}
	defer func() {
		if p := recover(); p != nil {
			c, ok := p.(exitPanic)
			if !ok {
				panic(p)
			}
			code = int(c)
		}
	}()
	if len(args) == 0 {
		args = []string{"--help"}
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "forq: %v\n", err)
		var pe *kong.ParseError
		if errors.As(err, &pe) && pe.Context != nil && pe.Context.Selected() != nil {
			fmt.Fprintf(stderr, "run 'forq %s --help' for usage\n", pe.Context.Selected().Path())
		} else {
			fmt.Fprintln(stderr, "run 'forq --help' for usage")
		}
		return ExitUsage
	}
	env := &Env{Stdin: stdin, Stdout: stdout, Stderr: stderr, Log: newLogger(stderr, cli.LogFormat, cli.LogLevel)}
	name := "forq"
	for _, w := range strings.Fields(kctx.Command()) {
		if !strings.HasPrefix(w, "<") {
			name += " " + w
		}
	}
	if err := kctx.Run(env); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			if ee.err != nil && ee.err.Error() != "" {
				fmt.Fprintf(stderr, "%s: %v\n", name, ee.err)
			}
			return ee.code
		}
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitError
	}
	return ExitOK
}

func newLogger(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// ConnFlags are the flags of every command that talks to the broker.
type ConnFlags struct {
	URL            string        `default:"nats://127.0.0.1:4222" help:"Broker URL; several, comma-separated, for a NATS cluster."`
	Token          string        `help:"Token to present to the broker."`
	User           string        `help:"User name to present to the broker."`
	Password       string        `help:"Password to present to the broker."`
	ConnectTimeout time.Duration `default:"2s" help:"How long to try to reach the broker before giving up."`
}

// TopologyFlags tune the streams and bucket when this process is the first
// to declare them.
type TopologyFlags struct {
	Replicas  int           `default:"1" help:"Replicas of forq's streams and bucket, when this process creates them (3 on a cluster)."`
	ResultTTL time.Duration `default:"24h" help:"How long results are kept, when this process creates the results bucket."`
}

// connect connects to the broker; it reconnects forever after the first
// success, but fails fast with a clear error if the broker cannot be
// reached at first.
func (c *ConnFlags) connect(name string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.Timeout(c.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("lost the broker; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("reconnected to the broker", "url", nc.ConnectedUrl()) }),
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
	if c.User != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	var nc *nats.Conn
	var err error
	deadline := time.Now().Add(c.ConnectTimeout)
	for {
		nc, err = nats.Connect(c.URL, opts...)
		if err == nil || time.Now().After(deadline) || errors.Is(err, nats.ErrAuthorization) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if errors.Is(err, nats.ErrAuthorization) {
		return nil, &exitError{code: ExitError, err: fmt.Errorf("the broker at %s refused our credentials: %w (give --token / FORQ_TOKEN, or --user and --password)", c.URL, err)}
	}
	if err != nil {
		return nil, &exitError{code: ExitError, err: fmt.Errorf("cannot reach the broker at %s: %w (start one with 'forq broker', or point --url / FORQ_URL at yours)", c.URL, err)}
	}
	return nc, nil
}

// signalContext is canceled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// ctxWithTimeout bounds ctx by d unless d is 0.
func ctxWithTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

func validateQueues(qs []string) error {
	for _, q := range qs {
		if err := forq.ValidateQueue(strings.TrimSpace(q)); err != nil {
			return usageErr("--queue: %v", err)
		}
	}
	return nil
}

// producer connects to the broker and opens a producer on it, with a
// context that SIGINT or SIGTERM cancels: what most commands that talk to
// the queue need. done closes them.
func (c *ConnFlags) producer(name string, env *Env) (context.Context, *producer.Producer, func(), error) {
	nc, err := c.connect(name, env.Log)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, stop := signalContext()
	p, err := producer.New(ctx, nc, producer.Config{})
	if err != nil {
		stop()
		nc.Close()
		return nil, nil, nil, err
	}
	return ctx, p, func() { stop(); nc.Close() }, nil
}
