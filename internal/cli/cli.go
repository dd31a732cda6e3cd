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
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/forqhq/forq"
	"github.com/forqhq/forq/connect"
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

func (e *exitError) Error() string {
	if e.err == nil {
		return "exit status " + strconv.Itoa(e.code)
	}
	return e.err.Error()
}
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
	// No FORQ_VERSION: an environment variable must not turn every
	// command into printing the version.
	Version kong.VersionFlag `env:"-" help:"Print forq's version and commit, and exit."`

	Broker  BrokerCmd  `cmd:"" help:"Run the embedded NATS broker with JetStream (the queue) in the foreground."`
	Init    InitCmd    `cmd:"" help:"Declare forq's streams, KV buckets and queue consumers (as an admin, for users that may not create them); report what exists with other settings."`
	Enqueue EnqueueCmd `cmd:"" help:"Enqueue a task, or one task per line of a file."`
	Work    WorkCmd    `cmd:"" help:"Run a worker process: pull tasks and run the built-in task types (echo, sleep; exec with --allow-exec)."`
	Pool    PoolCmd    `cmd:"" help:"Run a pool of worker processes (default: one per CPU), restarting crashed ones."`
	Run     RunCmd     `cmd:"" help:"All in one: the embedded broker and a pool of workers. The quickest way to try forq."`
	Result  ResultCmd  `cmd:"" help:"Show a task's recorded result."`
	Cancel  CancelCmd  `cmd:"" help:"Cancel tasks: a queued one never starts, a running one is stopped wherever it runs."`
	Record  RecordCmd  `cmd:"" help:"Record every task of a queue (state, result), as if each were enqueued with --record; --off stops it."`
	Stats   StatsCmd   `cmd:"" help:"Show each queue (queued, running, dead, paused, done and failed in the last minute) and the workers."`
	Tasks   TasksCmd   `cmd:"" help:"List a queue's tasks (running, queued, scheduled) with a preview of their payloads."`
	Dead    DeadCmd    `cmd:"" help:"List, show, retry or purge dead letters: tasks that used up their attempts."`
	Pause   PauseCmd   `cmd:"" help:"Pause a queue: its workers start nothing until 'forq resume' (or --until/--for)."`
	Resume  ResumeCmd  `cmd:"" help:"Resume a paused queue."`
	UI      UICmd      `cmd:"" name:"ui" help:"Serve the web dashboard (queues, workers, tasks, dead letters, schedules) on 127.0.0.1:8474."`
	Health  HealthCmd  `cmd:"" help:"Exit 0 if the broker (or a forq process's /healthz) is healthy; for scripts and docker-compose healthchecks."`
	Demo    DemoCmd    `cmd:"" help:"Run the multiprocessing tutorial's examples over the queue with real processes."`
	Bench   BenchCmd   `cmd:"" help:"Measure forq's throughput, latency and footprint, optionally beside raw JetStream."`
	Torture TortureCmd `cmd:"" help:"Inject faults (worker, pool, broker kills) into a pool under load, and check that no task was lost or ran twice unexplained."`
	// The processes forq bench starts, re-executing this binary.
	BenchWorker   BenchWorkerCmd   `cmd:"" name:"bench-worker" hidden:"" help:"A worker process of forq bench."`
	BenchProducer BenchProducerCmd `cmd:"" name:"bench-producer" hidden:"" help:"A producer process of forq bench."`

	Schedule ScheduleCmd `cmd:"" help:"Periodic tasks: add (--every or --cron), ls, rm."`
	Ver      VersionCmd  `cmd:"" name:"version" help:"Print forq's version: the module's, the commit it was built from, and the Go release."`
}

const description = `forq is a durable task queue on NATS JetStream: Python's multiprocessing
model (Process, Pool, Queue, subprocess) for many programs at once.

Every flag can also be set with the environment variable shown beside it.`

type exitPanic int

// Main runs the forq command with args and returns its exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) (code int) {
	var cli CLI
	parser, err := newParser(&cli, stdout, stderr)
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
		return usageFailure(stderr, &cli, err)
	}
	env := &Env{Stdin: stdin, Stdout: stdout, Stderr: stderr, Log: newLogger(stderr, cli.LogFormat, cli.LogLevel)}
	name := "forq"
	for _, w := range strings.Fields(kctx.Command()) {
		if !strings.HasPrefix(w, "<") {
			name += " " + w
		}
	}
	if err := kctx.Run(env); err != nil {
		// An exitError (alone or joined) sets the code, and says what
		// its own error says, or nothing: the command has already told
		// the user (enqueue --wait's task error, say).
		code, msg := ExitError, ""
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
			if ee.err != nil {
				msg = ee.err.Error()
			}
		} else {
			msg = err.Error()
		}
		if msg != "" {
			fatal(env, name, msg, code)
		}
		return code
	}
	return ExitOK
}

// fatal reports the error that ends command name with exit code code, in
// the log's format: a line "name: msg" in text, one record at level ERROR
// in JSON (msg "name failed", err and exit_code), whatever --log-level.
func fatal(env *Env, name, msg string, code int, attrs ...any) {
	if logFormat(env.Log) != "json" {
		fmt.Fprintf(env.Stderr, "%s: %s\n", name, msg)
		return
	}
	r := slog.NewRecord(time.Now(), slog.LevelError, name+" failed", 0)
	r.AddAttrs(slog.String("err", msg), slog.Int("exit_code", code))
	r.Add(attrs...)
	_ = env.Log.Handler().Handle(context.Background(), r) // stderr is all there is to report to
}

// banner tells the operator what a long-running command serves, and how
// (a broker's URL, "stop with Ctrl-C"): a line on stderr in text, an INFO
// record in JSON. Stdout is for a command's results alone.
func banner(env *Env, format string, args ...any) {
	if logFormat(env.Log) == "json" {
		env.Log.Info(strings.TrimSpace(fmt.Sprintf(format, args...))) // no text-mode indent
		return
	}
	fmt.Fprintf(env.Stderr, format+"\n", args...)
}

// usageFailure reports err, the parser's refusal of the command line, and
// returns ExitUsage. With --log-format json (when the parser got as far as
// setting it: a value refused by a check, not an unknown flag) it is one
// record at level ERROR, else two lines: the error and how to get help.
func usageFailure(stderr io.Writer, cli *CLI, err error) int {
	var pe *kong.ParseError
	var ee *exitError
	name, msg := "forq", err.Error()
	if errors.As(err, &pe) && pe.Context != nil && pe.Context.Selected() != nil {
		name = "forq " + pe.Context.Selected().Path()
		if errors.As(err, &ee) {
			// A flag group's own check (validate.go): kong prefixes the
			// command's path; say it as a command's error does.
			msg = ee.err.Error()
		}
	}
	help := "run '" + name + " --help' for usage"
	if cli.LogFormat == "json" {
		fatal(&Env{Stderr: stderr, Log: newLogger(stderr, "json", "error")}, name, msg, ExitUsage, "help", help)
		return ExitUsage
	}
	if ee == nil {
		name = "forq" // kong's message names the command itself
	}
	fmt.Fprintf(stderr, "%s: %s\n%s\n", name, msg, help)
	return ExitUsage
}

// newParser returns the flag parser of the forq command line into cli. Its
// --help and usage exits panic with an exitPanic, which Main recovers.
func newParser(cli *CLI, stdout, stderr io.Writer) (*kong.Kong, error) {
	return kong.New(cli, append(numberMappers(),
		kong.Name("forq"),
		kong.Description(description),
		kong.DefaultEnvars("FORQ"),
		kong.Writers(stdout, stderr),
		kong.Exit(func(c int) { panic(exitPanic(c)) }),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true, NoExpandSubcommands: true}),
		kong.Vars{"version": version()},
	)...)
}

// newLogger returns the logger of every command: text or JSON on w, from
// level up. A duration is written as Go writes it, "1.5s" (readableDuration).
func newLogger(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv, ReplaceAttr: readableDuration}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// readableDuration writes a duration attribute as a string such as "1.5s"
// or "250ms" (time.Duration.String), not JSON's integer nanoseconds.
func readableDuration(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}

// ConnFlags are the flags of every command that talks to the broker: the
// fields of a connect.Config (config makes one of them).
type ConnFlags struct {
	URL            string        `default:"nats://127.0.0.1:4222" help:"Broker URL; several, comma-separated, for a NATS cluster. tls://host:port requires TLS."`
	Token          string        `help:"Token to present to the broker."`
	User           string        `help:"User name to present to the broker."`
	Password       string        `help:"Password to present to the broker."`
	Creds          string        `placeholder:"FILE" help:"A .creds file (user JWT and nkey seed) for a broker in operator (JWT) mode."`
	NKey           string        `name:"nkey" placeholder:"FILE" help:"A file holding a user's nkey seed (SU...), for a broker that takes nkey users."`
	TLSCA          string        `name:"tls-ca" placeholder:"FILE" help:"PEM file of the CA that signed the broker's certificate, if the system does not trust it."`
	TLSCert        string        `name:"tls-cert" placeholder:"FILE" help:"PEM client certificate, for a broker that verifies its clients (with --tls-key)."`
	TLSKey         string        `name:"tls-key" placeholder:"FILE" help:"PEM private key of --tls-cert."`
	TLSServerName  string        `name:"tls-server-name" placeholder:"NAME" help:"Name the broker's certificate must hold, if not the URL's host."`
	ConnectTimeout time.Duration `default:"2s" help:"How long to try to reach the broker before giving up."`
}

// TopologyFlags tune the streams and bucket when this process is the first
// to declare them.
type TopologyFlags struct {
	Replicas  int           `default:"1" help:"Replicas of forq's streams and bucket, when this process creates them (3 on a cluster)."`
	ResultTTL time.Duration `default:"24h" help:"How long results are kept, when this process creates the results bucket."`
	// DuplicateWindow is how long the broker remembers a task ID to drop
	// a second enqueue of it: also how long a producer retries a publish,
	// and what the broker keeps in memory (about 180 B an ID).
	DuplicateWindow time.Duration `default:"2m" help:"How long the broker remembers each task ID to drop a second enqueue of it, when this process creates the task stream: a producer retries a publish for at most 9/10 of it, and the broker holds every ID of the window in memory (about 180 B each)."`
}

// childEnv returns the environment by which a pool passes the connection
// flags on to its workers, forq work or the user's command (which
// connect.FromEnv reads): all of them, since the credentials and the TLS
// files go by the environment, never by argv (which ps shows). Every
// variable is set, empty when its flag is, so
// that one the pool did not read (forq run's, whose FORQ_TLS_* are its
// broker's) does not reach the workers; the files' paths are absolute, so
// that a child that runs elsewhere finds them.
func (c *ConnFlags) childEnv() []string {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); p != "" && err == nil {
			return a
		}
		return p
	}
	return []string{
		"FORQ_URL=" + c.URL,
		"FORQ_TOKEN=" + c.Token,
		"FORQ_USER=" + c.User,
		"FORQ_PASSWORD=" + c.Password,
		"FORQ_CREDS=" + abs(c.Creds),
		"FORQ_NKEY=" + abs(c.NKey),
		"FORQ_TLS_CA=" + abs(c.TLSCA),
		"FORQ_TLS_CERT=" + abs(c.TLSCert),
		"FORQ_TLS_KEY=" + abs(c.TLSKey),
		"FORQ_TLS_SERVER_NAME=" + c.TLSServerName,
		"FORQ_CONNECT_TIMEOUT=" + c.ConnectTimeout.String(),
	}
}

// childArgs returns the flags of forq work that pass the topology flags
// on to a pool's forq work children.
func (f *TopologyFlags) childArgs() []string {
	return []string{"--replicas", strconv.Itoa(f.Replicas), "--result-ttl", f.ResultTTL.String(), "--duplicate-window", f.DuplicateWindow.String()}
}

// config returns the connect.Config of the flags, for a connection named
// name. Its dial timeout is connect's default, 2s (or --connect-timeout
// if shorter): --connect-timeout is how long to keep trying, not how long
// one try may hang. A dial to the address of a broker container that was
// just killed gets no answer at all, and one that waited 30s (the compose
// file's FORQ_CONNECT_TIMEOUT) kept a worker away seconds after the broker
// was back, long enough for its running tasks to be redelivered to
// others.
func (c *ConnFlags) config(name string) connect.Config {
	return connect.Config{
		URLs:           []string{c.URL},
		Name:           name,
		Token:          c.Token,
		User:           c.User,
		Password:       c.Password,
		NKeyFile:       c.NKey,
		CredsFile:      c.Creds,
		CAFile:         c.TLSCA,
		CertFile:       c.TLSCert,
		KeyFile:        c.TLSKey,
		ServerName:     c.TLSServerName,
		ConnectTimeout: c.ConnectTimeout,
	}
}

// connect connects to the broker; it reconnects forever after the first
// success, but fails fast with a clear error if the broker cannot be
// reached at first or refuses us.
func (c *ConnFlags) connect(name string, log *slog.Logger) (*nats.Conn, error) {
	nc, err := c.config(name).Connect(
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("lost the broker; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("reconnected to the broker", "url", nc.ConnectedUrl()) }),
	)
	if err != nil {
		return nil, connError(c.URL, err)
	}
	return nc, nil
}

// connFlag is the flag (and its variable) of each field of a
// connect.Config that ConnFlags sets.
var connFlag = map[string]string{
	"Token":          "--token / FORQ_TOKEN",
	"User":           "--user / FORQ_USER",
	"Password":       "--password / FORQ_PASSWORD",
	"NKeyFile":       "--nkey / FORQ_NKEY",
	"CredsFile":      "--creds / FORQ_CREDS",
	"CAFile":         "--tls-ca / FORQ_TLS_CA",
	"CertFile":       "--tls-cert / FORQ_TLS_CERT",
	"KeyFile":        "--tls-key / FORQ_TLS_KEY",
	"ServerName":     "--tls-server-name / FORQ_TLS_SERVER_NAME",
	"ConnectTimeout": "--connect-timeout / FORQ_CONNECT_TIMEOUT",
}

// connError says why connect failed in the flags' terms: a fault of the
// flags is a usage error naming the flag; a refusal says which flags to
// give.
func connError(url string, err error) error {
	var fe *connect.FieldError
	if errors.As(err, &fe) {
		if fe.With != "" {
			return usageErr("%s and %s: %v", connFlag[fe.Field], connFlag[fe.With], fe.Err)
		}
		return usageErr("%s: %v", connFlag[fe.Field], fe.Err)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err
	}
	var msg string
	switch {
	case errors.Is(ce.Kind, connect.ErrRefused):
		msg = "the broker at %s refused our credentials: %w (give --token / FORQ_TOKEN, --user and --password, --nkey / FORQ_NKEY with an nkey seed file, or --creds / FORQ_CREDS with a .creds file)"
	case errors.Is(ce.Kind, connect.ErrUnknownAuthority):
		msg = "the broker at %s has a TLS certificate this host does not trust: %w (give the CA that signed it with --tls-ca / FORQ_TLS_CA)"
	case errors.Is(ce.Kind, connect.ErrTLS):
		msg = "TLS with the broker at %s failed: %w (check --tls-ca, --tls-cert and --tls-key (FORQ_TLS_*): a broker that verifies clients needs a client certificate its CA signed; --tls-server-name when the URL's host is not on the broker's certificate; and that the broker has TLS)"
	default:
		msg = "cannot reach the broker at %s: %w (start one with 'forq broker', or point --url / FORQ_URL at yours)"
	}
	return &exitError{code: ExitError, err: fmt.Errorf(msg, url, ce.Err)}
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

// removeTemp removes a temporary directory a command made. A failure is
// logged, not returned: the command's own result is what it reports, and
// the directory left behind is named for the user to remove.
func removeTemp(log *slog.Logger, dir string) {
	if err := os.RemoveAll(dir); err != nil {
		log.Warn("could not remove a temporary directory", "dir", dir, "err", err)
	}
}
