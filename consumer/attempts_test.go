//go:build linux

package consumer_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/topology"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Some tests run workers in child processes, which crash or are frozen for
// real: the test binary itself, started with childEnv set to a mode (see
// childWorker), which TestMain runs instead of the tests.
const childEnv = "FORQ_CONSUMER_TEST_CHILD"

// childWorker is a worker process for the tests: it connects to
// $FORQ_URL, serves queue $QUEUE with the handlers of its mode and
// returns its exit code.
func childWorker(mode string) int {
	nc, err := nats.Connect(os.Getenv("FORQ_URL"), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer nc.Close()
	conc, _ := strconv.Atoi(os.Getenv("CONCURRENCY"))
	ackWait, _ := time.ParseDuration(os.Getenv("ACK_WAIT"))
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	w, err := consumer.New(ctx, nc, consumer.Config{
		Queues: []string{os.Getenv("QUEUE")}, Concurrency: conc, AckWait: ackWait,
		RetryBase: 10 * time.Millisecond, Grace: time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	switch mode {
	case "crash":
		w.HandleFunc("ok", func(ctx context.Context, t *consumer.Task) ([]byte, error) {
			time.Sleep(20 * time.Millisecond)
			return nil, nil
		})
		w.HandleFunc("exit", func(ctx context.Context, t *consumer.Task) ([]byte, error) {
			time.Sleep(30 * time.Millisecond) // let neighbours start
			os.Exit(3)
			return nil, nil
		})
	case "freeze":
		w.HandleFunc("long", func(ctx context.Context, t *consumer.Task) ([]byte, error) {
			fmt.Printf("started %d\n", os.Getpid())
			time.Sleep(3 * time.Second) // ignores ctx: returns success whatever happened
			fmt.Printf("returned cause=%v\n", context.Cause(ctx))
			return []byte("child"), nil
		})
	}
	go func() {
		// The test ends this process with SIGTERM, or by closing stdin.
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// child is a running childWorker.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *strings.Builder
	done   chan struct{}
	code   int
}

func startChild(t *testing.T, mode, url, queue string, concurrency int, ackWait time.Duration) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "FORQ_URL="+url, "QUEUE="+queue,
		"CONCURRENCY="+strconv.Itoa(concurrency), "ACK_WAIT="+ackWait.String())
	c := &child{cmd: cmd, lines: make(chan string, 100), stderr: &strings.Builder{}, done: make(chan struct{})}
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pipes sync.WaitGroup
	pipes.Go(func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default:
			}
		}
	})
	var mu sync.Mutex
	pipes.Go(func() {
		b, _ := io.ReadAll(errPipe)
		mu.Lock()
		c.stderr.Write(b)
		mu.Unlock()
	})
	go func() {
		pipes.Wait()
		_ = cmd.Wait()
		c.code = cmd.ProcessState.ExitCode()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = c.stdin.Close()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

func (c *child) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
		return c.code
	case <-time.After(d):
		t.Fatalf("child %d still running after %s", c.cmd.Process.Pid, d)
		return -1
	}
}

// A task that crashes its worker process (os.Exit) among others in the
// same process is dead-lettered after exactly its attempts, with its
// reason; the tasks that died with it are not charged: each is allowed a
// single attempt, and none is dead-lettered.
func TestCrashAloneIsAFailureCrashBesideOthersIsNot(t *testing.T) {
	b := setup(t)
	const queue, normal, maxCrash = "crashq", 60, 2
	var tasks []forq.Task
	for i := range normal {
		tasks = append(tasks, forq.Task{Type: "ok", ID: fmt.Sprintf("ok-%03d", i), MaxAttempts: 1})
	}
	crashers := []string{"exit-1", "exit-2"}
	for _, id := range crashers {
		tasks = append(tasks, forq.Task{Type: "exit", ID: id, MaxAttempts: maxCrash})
	}
	// Crashers first among the normal tasks, so they run beside them.
	tasks[10], tasks[normal] = tasks[normal], tasks[10]
	tasks[30], tasks[normal+1] = tasks[normal+1], tasks[30]
	if _, err := b.p.EnqueueMany(t.Context(), tasks, producer.WithQueue(queue), producer.WithRecord()); err != nil {
		t.Fatal(err)
	}
	// A little supervisor: a new child worker each time one exits, until
	// the queue is empty.
	streams, err := b.js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	left := func() uint64 {
		info, err := streams.Info(t.Context(), jetstream.WithSubjectFilter(wire.TaskSubject(queue)))
		if err != nil {
			return 1
		}
		return info.State.Msgs
	}
	starts, crashes := superviseCrashers(t, b, queue, left)
	if n := left(); n != 0 {
		t.Fatalf("%d tasks left after 90s (%d children, %d crashes)", n, starts, crashes)
	}
	dead := deadMsgs(t, b, queue, len(crashers))
	got := map[string]*jetstream.RawStreamMsg{}
	for _, m := range dead {
		got[m.Header.Get("Forq-Id")] = m
	}
	for _, id := range crashers {
		m := got[id]
		if m == nil {
			t.Errorf("%s not dead-lettered; dead letters: %v", id, got)
			continue
		}
		if a := m.Header.Get("Forq-Attempts"); a != strconv.Itoa(maxCrash) {
			t.Errorf("%s: %s = %s, want %d", id, "Forq-Attempts", a, maxCrash)
		}
		if e := m.Header.Get("Forq-Error"); !strings.Contains(e, "its worker process died while running it alone") {
			t.Errorf("%s: %s = %q, want the crash named", id, "Forq-Error", e)
		}
	}
	if len(got) != len(crashers) {
		t.Errorf("got %d dead letters, want %d (the crashers only): %v", len(got), len(crashers), got)
	}
	succeeded, alone := 0, 0
	for i := range normal {
		r, err := b.p.Result(t.Context(), fmt.Sprintf("ok-%03d", i))
		if err != nil {
			t.Fatal(err)
		}
		if r.State == forq.StateSucceeded && r.Attempts == 1 {
			succeeded++
		} else {
			t.Errorf("%s: got %s after %d attempt(s), want succeeded at attempt 1", r.ID, r.State, r.Attempts)
		}
		if r.Run > 1 {
			alone++
		}
	}
	t.Logf("%d normal tasks (1 attempt each) and %d crashers (%d attempts each), 4 per process: %d processes, %d crashed; "+
		"%d crashers dead-lettered after %d attempts; %d/%d normal tasks succeeded, %d of them after losing a delivery to a crash",
		normal, len(crashers), maxCrash, starts, crashes, len(got), maxCrash, succeeded, normal, alone)
}

// superviseCrashers starts a new child worker of queue (mode "crash", 4 at
// once) each time one exits, until the queue is empty or 90s have passed,
// and returns how many it started and how many crashed.
func superviseCrashers(t *testing.T, b *bundle, queue string, left func() uint64) (starts, crashes int) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for left() != 0 && time.Now().Before(deadline) {
		c := startChild(t, "crash", b.url, queue, 4, time.Second)
		starts++
	watch:
		for {
			select {
			case <-c.done:
				break watch
			case <-time.After(100 * time.Millisecond):
				if left() == 0 {
					_ = c.stdin.Close()
					c.wait(t, 10*time.Second)
					break watch
				}
			}
		}
		switch c.code {
		case 0:
		case 3:
			crashes++
		default:
			t.Fatalf("child exited %d: %s", c.code, c.stderr.String())
		}
	}
	return starts, crashes
}

// A worker frozen (SIGSTOP) past the ack wait loses its task's lease: when
// it resumes, it does not ack or record the task that another worker took
// meanwhile, although its handler returned success.
func TestFrozenWorkerLosesItsLease(t *testing.T) {
	b := setup(t)
	const queue = "leaseq"
	info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "long", ID: "leased"}, producer.WithQueue(queue), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	c := startChild(t, "freeze", b.url, queue, 1, time.Second)
	select {
	case l := <-c.lines:
		if !strings.HasPrefix(l, "started") {
			t.Fatalf("child said %q", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the child did not start the task: %s", c.stderr.String())
	}
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	// This process's worker gets the task once the ack wait is over.
	w := newWorker(t, b, consumer.Config{Queues: []string{queue}, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	var parentStart, parentEnd atomic.Int64
	w.HandleFunc("long", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		parentStart.Store(time.Now().UnixNano())
		defer func() { parentEnd.Store(time.Now().UnixNano()) }()
		select {
		case <-time.After(6 * time.Second):
			return []byte("parent"), nil
		case <-ctx.Done():
			t.Logf("parent's run canceled: %v", context.Cause(ctx))
			return nil, ctx.Err()
		}
	})
	start(t, w)
	testutil.Eventually(t, 20*time.Second, func() bool { return parentStart.Load() != 0 }, "the task was not redelivered")
	time.Sleep(time.Until(stopped.Add(2500 * time.Millisecond)))
	if err := c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	var line string
	select {
	case line = <-c.lines:
	case <-time.After(5 * time.Second):
		t.Fatalf("the child's handler did not return after it resumed: %s", c.stderr.String())
	}
	childEnd := time.Now()
	// Let an ack, had the child sent one, reach the broker.
	time.Sleep(500 * time.Millisecond)
	s, err := b.js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	si, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if parentEnd.Load() != 0 {
		t.Fatal("the parent's run ended too early for the test to tell")
	}
	if si.State.Msgs != 1 {
		t.Errorf("the task left the stream while its second run was running (%d messages): the frozen worker acked it", si.State.Msgs)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	r, err := b.p.Wait(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != forq.StateSucceeded || string(r.Result) != "parent" || r.WorkerPID != os.Getpid() {
		t.Errorf("got record %s %q by pid %d, want succeeded \"parent\" by this process (%d)", r.State, r.Result, r.WorkerPID, os.Getpid())
	}
	_ = c.stdin.Close()
	c.wait(t, 10*time.Second)
	if !strings.Contains(c.stderr.String(), "lease lost") {
		t.Errorf("the child did not log its lost lease: %s", c.stderr.String())
	}
	overlap := time.Duration(childEnd.UnixNano() - parentStart.Load())
	t.Logf("frozen %s (ack wait 1s); child handler said %q %s after SIGCONT; runs overlapped %s, the frozen one's time mostly stopped; %d task message(s) in the stream while the second run ran; record: %s %q by the second worker",
		resumed.Sub(stopped).Round(time.Millisecond), line, childEnd.Sub(resumed).Round(time.Millisecond), overlap.Round(time.Millisecond), si.State.Msgs, r.State, r.Result)
}

// A worker frozen (SIGSTOP) past the ack wait while it runs a suspect
// alone, then resumed, is alive: its lost lease is no crash of the task.
// The task (one attempt allowed) is redelivered to the same worker, runs
// again and succeeds; it is not dead-lettered as "its worker process died
// while running it alone".
func TestFrozenRunAloneIsNotACrash(t *testing.T) {
	b := setup(t)
	const queue, id = "frozenalone", "frozen-alone"
	tasks, err := b.js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := topology.EnsureConsumer(t.Context(), b.nc, tasks, queue, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.p.Enqueue(t.Context(), forq.Task{Type: "long", ID: id, MaxAttempts: 1}, producer.WithQueue(queue), producer.WithRecord()); err != nil {
		t.Fatal(err)
	}
	// A first delivery lost without a word: the next one is a suspect and
	// runs alone (attempts.go).
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range batch.Messages() {
	}
	c := startChild(t, "freeze", b.url, queue, 1, time.Second)
	select {
	case l := <-c.lines:
		if !strings.HasPrefix(l, "started") {
			t.Fatalf("child said %q", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the child did not start the task: %s", c.stderr.String())
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rec, err := b.p.Result(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Alone || rec.Run != 2 {
		t.Fatalf("the second delivery did not run alone: record %+v", rec)
	}
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	if err := c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	r, err := b.p.Wait(ctx, id)
	if err != nil {
		t.Fatalf("%v; child's log: %s", err, c.stderr.String())
	}
	if r.State != forq.StateSucceeded || r.Attempts != 1 || r.Failures != 0 {
		t.Errorf("got %s after %d attempt(s), %d failure(s) (%q), want succeeded at attempt 1; child's log: %s",
			r.State, r.Attempts, r.Failures, r.Error, c.stderr.String())
	}
	dead, err := b.js.Stream(t.Context(), forq.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	info, err := dead.Info(t.Context(), jetstream.WithSubjectFilter(wire.DeadSubject(queue)))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Errorf("%d dead letter(s): a frozen worker was taken for a crashed one", info.State.Msgs)
	}
	_ = c.stdin.Close()
	c.wait(t, 10*time.Second)
	if !strings.Contains(c.stderr.String(), "lease lost") {
		t.Errorf("the child did not lose its lease: %s", c.stderr.String())
	}
	t.Logf("frozen 2.5s (ack wait 1s) while running alone; record: %s, run %d, attempt %d", r.State, r.Run, r.Attempts)
}

// A handler that ignores its context past its timeout is abandoned: its
// task is settled as timed out (retried, then dead-lettered after its
// attempts), and Run returns ErrAbandoned once the other task running
// beside it is done. The abandoned handler, when it finally returns, acks
// and records nothing.
func TestHandlerIgnoringItsTimeoutIsAbandoned(t *testing.T) {
	b := setup(t)
	const queue = "abandonq"
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	var stuckRuns atomic.Int64
	newW := func() *consumer.Worker {
		w := newWorker(t, b, consumer.Config{Queues: []string{queue}, Concurrency: 2, AckWait: time.Second, AbandonGrace: 300 * time.Millisecond, RetryBase: 10 * time.Millisecond})
		w.HandleFunc("stuck", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
			stuckRuns.Add(1)
			<-release // ignores ctx
			return []byte("late"), nil
		})
		w.HandleFunc("slow", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
			time.Sleep(1500 * time.Millisecond)
			return []byte("slow done"), nil
		})
		return w
	}
	stuck, err := b.p.Enqueue(t.Context(), forq.Task{Type: "stuck", ID: "stuck"}, producer.WithQueue(queue), producer.WithRecord(),
		producer.WithTimeout(200*time.Millisecond), producer.WithMaxAttempts(2))
	if err != nil {
		t.Fatal(err)
	}
	slow, err := b.p.Enqueue(t.Context(), forq.Task{Type: "slow", ID: "slow"}, producer.WithQueue(queue), producer.WithRecord())
	if err != nil {
		t.Fatal(err)
	}
	var runs []time.Duration
	for i := range 2 {
		w := newW()
		began := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		err := w.Run(ctx)
		cancel()
		runs = append(runs, time.Since(began))
		if !errors.Is(err, consumer.ErrAbandoned) {
			t.Fatalf("worker %d: Run = %v, want ErrAbandoned", i, err)
		}
		r, err := b.p.Result(t.Context(), stuck.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := forq.StateFailed
		if i == 1 {
			want = forq.StateDead
		}
		if r.State != want || r.Attempts != i+1 || !strings.Contains(r.Error, "task timed out after 200ms") || !strings.Contains(r.Error, "abandoned") {
			t.Errorf("worker %d: stuck task's record %s, attempt %d, %q; want %s, attempt %d, timed out and abandoned", i, r.State, r.Attempts, r.Error, want, i+1)
		}
	}
	if r, err := b.p.Result(t.Context(), slow.ID); err != nil || r.State != forq.StateSucceeded {
		t.Errorf("the task beside the abandoned one: %+v, %v; want succeeded", r, err)
	}
	dead := deadMsgs(t, b, queue, 1)
	if e := dead[0].Header.Get("Forq-Error"); !strings.Contains(e, "timed out") || dead[0].Header.Get("Forq-Attempts") != "2" {
		t.Errorf("dead letter: error %q attempts %s, want timed out after 2", e, dead[0].Header.Get("Forq-Attempts"))
	}
	// Let the abandoned handlers return: nothing they return is recorded.
	once.Do(func() { close(release) })
	time.Sleep(300 * time.Millisecond)
	if r, _ := b.p.Result(t.Context(), stuck.ID); r.State != forq.StateDead || string(r.Result) == "late" {
		t.Errorf("after the abandoned handlers returned: record %s %q, want still dead, without their result", r.State, r.Result)
	}
	t.Logf("stuck handler ran %d times (timeout 200ms, grace 300ms); the workers returned ErrAbandoned after %v (the first waited for the 1.5s task beside it)", stuckRuns.Load(), runs)
}

// A task redelivered after a lost delivery runs alone: its worker waits
// for the handlers running, starts none beside it, and records the start
// of the run alone before calling its handler.
func TestSuspectRunsAlone(t *testing.T) {
	b := setup(t)
	const queue, busyTasks = "aloneq", 120
	var running, most, besideSolo atomic.Int64
	var soloRunning atomic.Bool
	var mu sync.Mutex
	var soloRecord forq.Result
	soloOthers := int64(-1)
	w := newWorker(t, b, consumer.Config{Queues: []string{queue}, Concurrency: 4, AckWait: time.Second})
	w.HandleFunc("busy", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		if soloRunning.Load() {
			besideSolo.Add(1)
		}
		time.Sleep(50 * time.Millisecond)
		if soloRunning.Load() {
			besideSolo.Add(1)
		}
		return nil, nil
	})
	w.HandleFunc("solo", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		soloRunning.Store(true)
		defer soloRunning.Store(false)
		others := running.Load()
		r, err := b.p.Result(ctx, task.ID)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		soloOthers, soloRecord = others, *r
		mu.Unlock()
		time.Sleep(300 * time.Millisecond)
		return nil, nil
	})
	if _, err := b.p.Enqueue(t.Context(), forq.Task{Type: "solo", ID: "solo"}, producer.WithQueue(queue), producer.WithMaxAttempts(1)); err != nil {
		t.Fatal(err)
	}
	// Its first delivery is lost: taken by a "worker" that never answers.
	streams, err := b.js.Stream(t.Context(), forq.StreamTasks)
	if err != nil {
		t.Fatal(err)
	}
	c, err := topology.EnsureConsumer(t.Context(), b.js.Conn(), streams, queue, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range batch.Messages() {
	}
	// Busy tasks keep the worker's 4 slots full when it comes back.
	var tasks []forq.Task
	for range busyTasks {
		tasks = append(tasks, forq.Task{Type: "busy"})
	}
	if _, err := b.p.EnqueueMany(t.Context(), tasks, producer.WithQueue(queue)); err != nil {
		t.Fatal(err)
	}
	start(t, w)
	testutil.Eventually(t, 30*time.Second, func() bool {
		r, err := b.p.Result(t.Context(), "solo")
		return err == nil && r.State == forq.StateSucceeded
	}, "the suspect did not succeed")
	mu.Lock()
	defer mu.Unlock()
	if soloOthers != 0 || besideSolo.Load() != 0 {
		t.Errorf("the suspect started beside %d handlers, and %d samples of other handlers saw it running: want 0 and 0", soloOthers, besideSolo.Load())
	}
	if soloRecord.State != forq.StateRunning || !soloRecord.Alone || soloRecord.Run != 2 || soloRecord.Attempts != 1 {
		t.Errorf("record during its run: %s, alone %v, run %d, attempt %d; want running, alone, run 2, attempt 1",
			soloRecord.State, soloRecord.Alone, soloRecord.Run, soloRecord.Attempts)
	}
	if most.Load() < 2 {
		t.Errorf("at most %d busy handlers ran at once: the test did not run them beside each other", most.Load())
	}
	t.Logf("a suspect among %d tasks of 50ms on a worker of 4 slots: busy handlers up to %d at once; the suspect started beside %d, and %d samples of others saw it running; its record said %s alone=%v run %d",
		busyTasks, most.Load(), soloOthers, besideSolo.Load(), soloRecord.State, soloRecord.Alone, soloRecord.Run)
}

// A stop always ends: a handler that ignores its canceled context at the
// end of the grace period is abandoned AbandonGrace later, its task handed
// back (not failed), and Run returns ErrAbandoned.
func TestStopAbandonsAHandlerIgnoringItsContext(t *testing.T) {
	b := setup(t)
	const queue = "stopq"
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	started := make(chan struct{}, 1)
	w := newWorker(t, b, consumer.Config{Queues: []string{queue}, Grace: 200 * time.Millisecond, AbandonGrace: 300 * time.Millisecond, AckWait: time.Minute})
	w.HandleFunc("deaf", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		started <- struct{}{}
		<-release // ignores ctx, and has no timeout
		return []byte("late"), nil
	})
	info, err := b.p.Enqueue(t.Context(), forq.Task{Type: "deaf", ID: "deaf"}, producer.WithQueue(queue), producer.WithRecord(), producer.WithMaxAttempts(1))
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, w)
	<-started
	began := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- stop() }()
	select {
	case err := <-errc:
		if !errors.Is(err, consumer.ErrAbandoned) {
			t.Fatalf("Run = %v, want ErrAbandoned", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return 10s after the stop")
	}
	stopped := time.Since(began)
	// Handed back, not failed: another worker runs it as attempt 1 (its
	// single attempt), long before the one-minute ack wait.
	w2 := newWorker(t, b, consumer.Config{Queues: []string{queue}})
	w2.HandleFunc("deaf", func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		return fmt.Appendf(nil, "attempt %d", task.Attempt), nil
	})
	start(t, w2)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	r, err := b.p.Wait(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != forq.StateSucceeded || string(r.Result) != "attempt 1" {
		t.Errorf("got %s %q, want succeeded \"attempt 1\"", r.State, r.Result)
	}
	once.Do(func() { close(release) })
	time.Sleep(200 * time.Millisecond)
	if r, _ := b.p.Result(t.Context(), info.ID); string(r.Result) != "attempt 1" {
		t.Errorf("after the abandoned handler returned: result %q, want still \"attempt 1\"", r.Result)
	}
	t.Logf("stop with grace 200ms and abandon grace 300ms returned ErrAbandoned after %s; the task ran again as %q", stopped.Round(time.Millisecond), r.Result)
}

// An exec task whose command ignores SIGTERM is not abandoned at its
// timeout plus AbandonGrace: its handler is stopping the command within its
// kill grace (SIGTERM, then SIGKILL), and the worker goes on.
func TestExecKillGraceIsNotAbandonment(t *testing.T) {
	b := setup(t)
	const queue = "execq"
	w := newWorker(t, b, consumer.Config{Queues: []string{queue}, AbandonGrace: 200 * time.Millisecond, AckWait: 5 * time.Second})
	w.Handle(forq.TypeExec, consumer.ExecHandler(consumer.ExecConfig{Allow: true, KillGrace: 1500 * time.Millisecond}))
	spec, err := json.Marshal(forq.ExecSpec{Argv: []string{"sh", "-c", `trap '' TERM; sleep 30`}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.p.Enqueue(t.Context(), forq.Task{Type: forq.TypeExec, Queue: queue, Payload: spec},
		producer.WithRecord(), producer.WithTimeout(300*time.Millisecond), producer.WithMaxAttempts(1))
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, w)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	r, err := b.p.Wait(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != forq.StateDead || !strings.Contains(r.Error, "timed out after 300ms") || strings.Contains(r.Error, "abandoned") {
		t.Errorf("got %s %q; want dead, timed out, not abandoned", r.State, r.Error)
	}
	if err := stop(); err != nil {
		t.Errorf("Run = %v, want nil: the exec handler was not abandoned", err)
	}
	t.Logf("exec task ignoring SIGTERM, timeout 300ms, kill grace 1.5s, abandon grace 200ms: %s after %s: %q",
		r.State, r.FinishedAt.Sub(r.StartedAt).Round(10*time.Millisecond), shortLine(r.Error))
}

func shortLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
