package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/torture"
	"github.com/forqhq/forq/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// composeWorkEnv sets how long each task of TestComposeRestartsRunEachTaskOnce
// works, as a Go duration (issue 14 used 25s); by default composeWork.
const composeWorkEnv = "FORQ_E2E_COMPOSE_WORK"

// composeWork is the default work of a task of the compose restart test:
// longer than the workers' FORQ_GRACE (so that "docker-compose stop
// workers" hands the tasks back) and than twice the ack wait (so that the
// tasks still run when the restarted broker looks for overdue ones).
const composeWork = 15 * time.Second

// composeSlots is the compose stack's task slots: three worker containers
// of docker-compose.yml's "workers" service, each a pool of 2 workers × 4.
const composeSlots = 3 * 2 * 4

// composePrompt is how soon after its run's end a waiter must see a task's
// success: "at once", with room for a loaded machine (a waiter of a task
// whose record a second run overwrote returned a whole run late; one that
// missed the end across a broker restart, 3.8 to 15 s late).
const composePrompt = 3 * time.Second

// TestComposeRestartsRunEachTaskOnce is issue 14's point 8 in the compose
// stack of docker-compose.yml, as the issue ran it: the "workers" service
// scaled to 3 containers, 24 tasks (one per slot) of composeWork each, the
// torture handler in the worker containers appending each run's start and
// end to history files in a directory bind-mounted from the host, and
// "forq enqueue --wait" waiters on the host. Three rounds:
//
//   - "docker-compose stop workers; start workers; restart broker" while
//     the 24 tasks run: the stop hands every task back within the workers'
//     grace (before Docker's stop_grace_period would SIGKILL them), the
//     tasks run again on the new workers, and the broker is restarted
//     (SIGTERM) while these second runs go on; every slot is taken, so a
//     task the broker redelivers waits for a slot to free;
//   - the broker alone restarted (SIGTERM: "restart") while 16 tasks run
//     that waited in the (paused) queue longer than the ack wait; 8 slots
//     are free, so a task the broker redelivers is taken at once;
//   - the same with SIGKILL ("kill -s KILL", then "start").
//
// Each task must complete exactly once, no two runs of one task overlap
// (a run after a restart is allowed once the earlier one has ended, as
// when a worker gives up a task it could not renew), round 1's first runs
// must end within the stop of the workers, every waiter sees its task's
// success within composePrompt of the run's end, and every record ends
// succeeded with no update after its first final state (a KV watch sees
// every revision). It needs Docker and docker-compose; without them it is
// skipped.
func TestComposeRestartsRunEachTaskOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the docker-compose test")
	}
	compose := composeCommand(t)
	work := composeWorkTime(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	grace, stopGrace := composeWorkerGrace(t, filepath.Join(root, "docker-compose.yml"))
	if work < grace+2*time.Second {
		t.Fatalf("%s %s: the tasks must work longer than the workers' FORQ_GRACE %s plus 2s, or stopping the workers does not hand them back", composeWorkEnv, work, grace)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	image, bin := composeImage(t, ctx, "forq-e2e-torture")
	c := &composeTorture{t: t, bin: bin}
	var override string
	c.hist, override = composeHistory(t)
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	token := hex.EncodeToString(tok)
	port := composeFreePort(t)
	env := []string{"FORQ_IMAGE=" + image, "FORQ_TOKEN=" + token, "FORQ_HOST_PORT=" + strconv.Itoa(port)}
	project := "forqtorture" + strconv.Itoa(os.Getpid())
	base := slices.Concat(compose, []string{"-p", project, "-f", filepath.Join(root, "docker-compose.yml"), "-f", override})
	c.env, c.base = env, base
	t.Cleanup(func() {
		if t.Failed() {
			args := append(append([]string{}, base...), "logs", "--no-color", "--tail", "40")
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Env = append(os.Environ(), env...)
			out, _ := cmd.CombinedOutput()
			t.Logf("docker-compose logs (tail):\n%s", out)
		}
		args := append(append([]string{}, base...), "down", "-v", "--remove-orphans", "--timeout", "5")
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("docker-compose down: %v\n%s", err, out)
		}
	})
	c.dc(ctx, "up", "-d", "--no-build", "--scale", "workers=3", "broker", "workers")
	var workers int
	c.waitFor(2*time.Minute, func() bool {
		h, err := torture.Read(c.hist)
		if err != nil {
			t.Fatal(err)
		}
		workers = len(h.Workers)
		return workers >= 6
	}, func() string {
		return fmt.Sprintf("only %d of the 6 worker processes of 3 containers started", workers)
	})

	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	nc, err := nats.Connect(url, nats.Token(token), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if c.cons, err = js.Consumer(ctx, forq.StreamTasks, wire.ConsumerName(forq.DefaultQueue)); err != nil {
		t.Fatal(err)
	}
	ackWait := c.cons.CachedInfo().Config.AckWait
	if work < 2*ackWait+2*time.Second {
		t.Fatalf("the queue's ack wait is %s, which the workers of docker-compose.yml set by default: the tasks (%s=%s) must work longer than twice it plus 2s, to be running when the restarted broker looks for overdue tasks (issue 14 wants a killed worker's task to run again within 5s, so an ack wait of a few seconds)",
			ackWait, composeWorkEnv, work)
	}
	kv, err := js.KeyValue(ctx, forq.BucketResults)
	if err != nil {
		t.Fatal(err)
	}
	recs := watchRecords(t, ctx, nc, kv)

	enqLog, err := torture.OpenLog(filepath.Join(c.hist, torture.FileEnqueued))
	if err != nil {
		t.Fatal(err)
	}
	defer enqLog.Close()
	c.hostEnv = append(os.Environ(), "FORQ_URL="+url, "FORQ_TOKEN="+token)
	// After the waiters: room for a second run that starts late (a lost
	// ack comes back one ack wait later).
	settle := ackWait + 2*time.Second

	// Round 1: the workers stopped and started, then the broker restarted.
	r1 := &composeRound{name: "stop-start-restart", tasks: composeSlots, how: "docker-compose stop workers; start workers; restart broker (SIGTERM)"}
	r1.deliveredFrom = c.delivered(ctx)
	r1.enqueue(t, ctx, bin, c.hostEnv, work)
	c.waitFor(time.Minute, func() bool { return c.started(r1.ids, 1) }, func() string {
		return fmt.Sprintf("round %s: %d of %d tasks never started", r1.name, c.missing, len(r1.ids))
	})
	r1.stored(t, enqLog)
	r1.stopAt = time.Now()
	r1.stopTook = c.dc(ctx, "stop", "workers")
	r1.stopEnd = time.Now()
	if r1.stopTook >= stopGrace {
		t.Errorf("docker-compose stop workers took %s, not less than their stop_grace_period %s: Docker SIGKILLed the workers instead of letting them hand their tasks back within FORQ_GRACE %s", r1.stopTook, stopGrace, grace)
	}
	startedWorkers := time.Now()
	c.dc(ctx, "start", "workers")
	c.waitFor(time.Minute, func() bool { return c.started(r1.ids, 2) }, func() string {
		return fmt.Sprintf("round %s: %d of %d tasks handed back by the stop never ran again", r1.name, c.missing, len(r1.ids))
	})
	r1.rerunIn = time.Since(startedWorkers)
	sleepUntil(r1.enqueued.Add(ackWait + 500*time.Millisecond)) // older than the ack wait
	r1.faultAt = time.Now()
	r1.faultTook = c.dc(ctx, "restart", "broker")
	r1.wait(t, work)
	time.Sleep(settle)
	r1.deliveredTo = c.delivered(ctx)

	// Rounds 2 and 3: the broker alone, while tasks that waited longer
	// than the ack wait in the queue run.
	r2 := &composeRound{name: "restart", tasks: 2 * composeSlots / 3, how: "docker-compose restart broker (SIGTERM)"}
	r3 := &composeRound{name: "kill", tasks: 2 * composeSlots / 3, how: "docker-compose kill -s KILL broker; start broker"}
	for _, r := range []*composeRound{r2, r3} {
		c.forqCmd(ctx, "pause", forq.DefaultQueue, "--ack-wait", ackWait.String())
		r.deliveredFrom = c.delivered(ctx)
		r.enqueue(t, ctx, bin, c.hostEnv, work)
		c.waitFor(time.Minute, func() bool { return c.pending(ctx, len(r.ids)) }, func() string {
			return fmt.Sprintf("round %s: %d of %d tasks queued", r.name, c.queued, len(r.ids))
		})
		r.stored(t, enqLog)
		sleepUntil(r.enqueued.Add(ackWait + 500*time.Millisecond))
		c.forqCmd(ctx, "resume", forq.DefaultQueue)
		c.waitFor(time.Minute, func() bool { return c.started(r.ids, 1) }, func() string {
			return fmt.Sprintf("round %s: %d of %d tasks never started", r.name, c.missing, len(r.ids))
		})
		// The broker writes a consumer's state about ten times a
		// second; a task delivered within that tenth of a second before
		// a SIGKILL comes back as a first delivery, which is not fenced
		// (README: When the broker restarts, what is not promised).
		time.Sleep(300 * time.Millisecond)
		r.faultAt = time.Now()
		if r == r2 {
			r.faultTook = c.dc(ctx, "restart", "broker")
		} else {
			r.faultTook = c.dc(ctx, "kill", "-s", "KILL", "broker")
			r.faultTook += c.dc(ctx, "start", "broker")
		}
		r.wait(t, work)
		time.Sleep(settle)
		r.deliveredTo = c.delivered(ctx)
	}

	h, err := torture.Read(c.hist)
	if err != nil {
		t.Fatal(err)
	}
	rep := torture.Check(h, torture.CheckOptions{})
	final := recs.stop(t, ctx, kv)
	for _, r := range []*composeRound{r1, r2, r3} {
		r.check(t, h, rep, final, composePrompt)
	}
	for _, l := range rep.Lost {
		t.Errorf("task %s lost: %d runs started, none completed", l.ID, l.Starts)
	}
	figuref(t, "history: %d tasks acknowledged, %d completed, %d runs in all, %d worker processes; ack wait %s, task work %s, workers' FORQ_GRACE %s and stop_grace_period %s",
		rep.Enqueued, rep.Completed, rep.Runs, len(h.Workers), ackWait, work, grace, stopGrace)
}

// composeWorkTime is how long each task works: composeWork, or the
// duration in $FORQ_E2E_COMPOSE_WORK.
func composeWorkTime(t *testing.T) time.Duration {
	t.Helper()
	s := os.Getenv(composeWorkEnv)
	if s == "" {
		return composeWork
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration like 25s", composeWorkEnv, s)
	}
	return d
}

// composeHistory makes the history directory the workers write to, and a
// docker-compose override file that mounts it into the workers.
func composeHistory(t *testing.T) (hist, override string) {
	t.Helper()
	// The workers run as uid 65532 and append to the history directory.
	hist = filepath.Join(t.TempDir(), "history")
	if err := os.Mkdir(hist, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(hist, 0o777); err != nil { // whatever the umask
		t.Fatal(err)
	}
	override = filepath.Join(t.TempDir(), "torture.yml")
	if err := os.WriteFile(override, fmt.Appendf(nil, `version: "3.8"
services:
  workers:
    environment:
      %s: /history
    volumes:
      - %q
`, torture.EnvDir, hist+":/history"), 0o644); err != nil {
		t.Fatal(err)
	}
	return hist, override
}

// composeTorture is what TestComposeRestartsRunEachTaskOnce works with:
// its docker-compose project, the forq command on the host, the queue's
// consumer and the history directory.
type composeTorture struct {
	t       *testing.T
	base    []string // the docker-compose command up to its subcommand
	env     []string // docker-compose's environment
	bin     string   // the forq command, built for the host
	hostEnv []string // its environment
	hist    string   // the history directory
	cons    jetstream.Consumer

	missing int    // how many tasks started fewer than n runs, as started last saw
	queued  uint64 // the tasks pending in the queue, as pending last saw
}

// waitFor polls cond until it holds, or fails the test with what's
// message after d.
func (c *composeTorture) waitFor(d time.Duration, cond func() bool, what func() string) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatal(what())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// dc runs docker-compose with args and returns how long it took.
func (c *composeTorture) dc(ctx context.Context, args ...string) time.Duration {
	c.t.Helper()
	start := time.Now()
	composeRun(c.t, ctx, c.env, append(append([]string{}, c.base...), args...)...)
	return time.Since(start)
}

// forqCmd runs the forq command on the host; it must succeed.
func (c *composeTorture) forqCmd(ctx context.Context, args ...string) {
	c.t.Helper()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = c.hostEnv
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Fatalf("forq %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// started reports whether each of the tasks ids has started n runs, by
// the history; c.missing counts those that have not.
func (c *composeTorture) started(ids []string, n int) bool {
	c.missing = 0
	h, err := torture.Read(c.hist)
	if err != nil {
		c.t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range h.Runs {
		count[r.ID]++
	}
	for _, id := range ids {
		if count[id] < n {
			c.missing++
		}
	}
	return c.missing == 0
}

// pending reports whether at least want tasks are pending in the queue;
// c.queued is how many there are.
func (c *composeTorture) pending(ctx context.Context, want int) bool {
	info, err := c.cons.Info(ctx)
	if err != nil {
		return false // ask again
	}
	c.queued = info.NumPending
	return c.queued >= uint64(want)
}

// delivered is how many deliveries the queue's consumer made so far,
// redeliveries included.
func (c *composeTorture) delivered(ctx context.Context) uint64 {
	c.t.Helper()
	var n uint64
	c.waitFor(time.Minute, func() bool {
		info, err := c.cons.Info(ctx)
		if err == nil {
			n = info.Delivered.Consumer
		}
		return err == nil
	}, func() string { return "no consumer info from the broker" })
	return n
}

// composeRound is one round of TestComposeRestartsRunEachTaskOnce: its
// tasks, their waiters, and when its faults were.
type composeRound struct {
	name, how string
	tasks     int // how many
	ids       []string
	waiters   []composeWaiter
	wg        sync.WaitGroup
	enqueued  time.Time // when every task was seen stored

	// Round 1's stop of the workers: when it began and ended, how long it
	// took, and how long after the start of the workers every task ran
	// again.
	stopAt, stopEnd   time.Time
	stopTook, rerunIn time.Duration

	faultAt   time.Time     // when the broker restart began
	faultTook time.Duration // how long docker-compose took over it

	// The consumer's count of deliveries before and after the round.
	deliveredFrom, deliveredTo uint64
}

// composeWaiter is a "forq enqueue --wait" process.
type composeWaiter struct {
	exit time.Time
	err  error
	out  bytes.Buffer
}

// enqueue starts one "forq enqueue --wait" per task, on the host.
func (r *composeRound) enqueue(t *testing.T, ctx context.Context, bin string, env []string, work time.Duration) {
	t.Helper()
	r.waiters = make([]composeWaiter, r.tasks)
	for i := range r.tasks {
		id := fmt.Sprintf("%s-%02d", r.name, i)
		r.ids = append(r.ids, id)
		w := &r.waiters[i]
		cmd := exec.CommandContext(ctx, bin, "enqueue", torture.TypeSafe, "--payload", work.String(), "--id", id,
			"--queue", forq.DefaultQueue, "--wait", "--wait-timeout", "5m")
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = &w.out, &w.out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r.wg.Go(func() {
			w.err = cmd.Wait()
			w.exit = time.Now()
		})
	}
}

// stored records that every task of the round is in the broker: its
// enqueue was acknowledged (or will be, the broker having stored it).
func (r *composeRound) stored(t *testing.T, l *torture.Log) {
	t.Helper()
	r.enqueued = time.Now()
	for _, id := range r.ids {
		if err := l.Append(torture.Event{Ev: torture.EvEnqueued, ID: id, Phase: r.name}); err != nil {
			t.Fatal(err)
		}
	}
}

// wait waits for the round's waiters: long enough for the work after the
// fault, with room for a broker that comes back slowly.
func (r *composeRound) wait(t *testing.T, work time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(work + 2*time.Minute):
		t.Fatalf("round %s: the waiters did not all return within %s of the broker restart", r.name, work+2*time.Minute)
	}
}

// roundTally is what composeRound.check counts over a round's tasks.
type roundTally struct {
	completions map[int]int    // completions per task: tasks
	outcomes    map[string]int // outcomes of the extra runs

	handedBack, extra, overlapping, overwritten, updates, notSucceeded, failed, started int

	worst time.Duration   // the longest overlap of two runs of a task
	lates []time.Duration // from a run's end to its waiter's return
}

// check asserts what the round promised and logs its figures.
func (r *composeRound) check(t *testing.T, h *torture.History, rep *torture.Report, recs map[string][]composeRecord, prompt time.Duration) {
	t.Helper()
	runs := map[string][]torture.TaskRun{}
	for _, run := range h.Runs {
		runs[run.ID] = append(runs[run.ID], run)
	}
	overlaps := map[string][]torture.Overlap{}
	for _, o := range rep.Concurrent {
		overlaps[o.ID] = append(overlaps[o.ID], o)
	}
	n := &roundTally{completions: map[int]int{}, outcomes: map[string]int{}}
	for i, id := range r.ids {
		rs := runs[id]
		sort.Slice(rs, func(a, b int) bool { return rs[a].Start.Before(rs[b].Start) })
		bad := r.checkRuns(rs, overlaps[id], n)
		bad = append(bad, r.checkWaiter(i, rs, prompt, n)...)
		bad = append(bad, checkRecord(recs[id], n)...)
		if len(bad) > 0 {
			t.Errorf("round %s, task %s: %s.\n  record revisions %s\n  runs:\n%s", r.name, id, strings.Join(bad, "; "), describeRecord(recs[id]), describeRuns(rs))
		}
	}
	for _, l := range rep.Late {
		if slices.Contains(r.ids, l.ID) {
			t.Errorf("round %s, task %s: run %s completed after another run of it had started", r.name, l.ID, l.Run)
		}
	}
	r.figures(t, n)
}

// checkRuns checks the runs rs of one task, in start order, and its
// overlapping runs: it completed once, its first run was handed back by
// round 1's stop of the workers, no two runs were alive at once. It counts
// into n and returns what is wrong.
func (r *composeRound) checkRuns(rs []torture.TaskRun, overlaps []torture.Overlap, n *roundTally) (bad []string) {
	n.started += len(rs)
	var done []torture.TaskRun
	for _, run := range rs {
		if run.Completed() {
			done = append(done, run)
		}
	}
	n.completions[len(done)]++
	if len(done) != 1 {
		bad = append(bad, fmt.Sprintf("completed %d times; want once", len(done)))
	}
	// A run before the last one is one the workers' stop handed back
	// (round 1's first, canceled within the stop), or an extra run.
	// An extra run is no fault by itself (a worker that lost the
	// broker for longer than the ack wait may give its task up, and
	// the task runs again), so long as it neither overlaps another
	// run nor completes the task a second time, checked above and
	// below.
	for j, run := range rs[:max(len(rs)-1, 0)] {
		if j == 0 && !r.stopAt.IsZero() && run.Outcome == torture.OutcomeCanceled && !run.End.Before(r.stopAt) && !run.End.After(r.stopEnd) {
			n.handedBack++
			continue
		}
		n.extra++
		if run.Outcome == "" {
			n.outcomes["no end"]++
		} else {
			n.outcomes[run.Outcome]++
		}
	}
	if !r.stopAt.IsZero() && (len(rs) < 2 || rs[0].Outcome != torture.OutcomeCanceled) {
		bad = append(bad, "its first run was not handed back by the workers' stop within their grace")
	}
	for _, o := range overlaps {
		n.overlapping++
		n.worst = max(n.worst, o.Overlap)
		bad = append(bad, fmt.Sprintf("two runs alive at once for %s (%s and %s)", o.Overlap.Round(time.Millisecond), o.A.Run, o.B.Run))
	}
	return bad
}

// checkWaiter checks the waiter of task i, whose runs are rs: it saw the
// task's success within prompt of its completed run's end.
func (r *composeRound) checkWaiter(i int, rs []torture.TaskRun, prompt time.Duration, n *roundTally) (bad []string) {
	w := &r.waiters[i]
	end := slices.IndexFunc(rs, func(run torture.TaskRun) bool { return run.Completed() })
	switch {
	case w.err != nil:
		n.failed++
		bad = append(bad, fmt.Sprintf("forq enqueue --wait: %v: %s", w.err, strings.TrimSpace(w.out.String())))
	case end >= 0:
		late := w.exit.Sub(rs[end].End)
		n.lates = append(n.lates, late)
		if late > prompt {
			bad = append(bad, fmt.Sprintf("forq enqueue --wait returned %s after its run ended; want within %s", late.Round(time.Millisecond), prompt))
		}
	}
	return bad
}

// checkRecord checks the revisions of a task's record: it ends succeeded,
// and nothing overwrote its first final state.
func checkRecord(rec []composeRecord, n *roundTally) (bad []string) {
	n.updates += len(rec)
	if len(rec) == 0 || rec[len(rec)-1].state != forq.StateSucceeded {
		n.notSucceeded++
		bad = append(bad, "its record does not end succeeded")
	}
	if j := slices.IndexFunc(rec, func(e composeRecord) bool { return e.state.Final() }); j >= 0 && j < len(rec)-1 {
		n.overwritten++
		bad = append(bad, fmt.Sprintf("its final record (revision %d, %s) was overwritten", rec[j].rev, rec[j].state))
	}
	return bad
}

// figures logs the round's figures.
func (r *composeRound) figures(t *testing.T, n *roundTally) {
	t.Helper()
	slices.Sort(n.lates)
	median, slowest := time.Duration(0), time.Duration(0)
	if len(n.lates) > 0 {
		median, slowest = n.lates[len(n.lates)/2], n.lates[len(n.lates)-1]
	}
	figuref(t, "round %s (%s, which took %s): %d tasks; completions per task %v; %d runs handed back by a stop of the workers, %d other extra runs (ended %v), %d pairs of runs of one task alive at once (longest %s); waiters: %d failed, the others returned a median %s and at most %s after the run's end; records: %d revisions seen, %d not ending succeeded, %d final ones overwritten",
		r.name, r.how, r.faultTook.Round(time.Millisecond), len(r.ids), n.completions, n.handedBack, n.extra, n.outcomes, n.overlapping, n.worst.Round(time.Millisecond),
		n.failed, median.Round(time.Millisecond), slowest.Round(time.Millisecond), n.updates, n.notSucceeded, n.overwritten)
	figuref(t, "round %s: the broker made %d deliveries of its tasks, %d of which did not start a run (redeliveries of a task running elsewhere, or already done)",
		r.name, r.deliveredTo-r.deliveredFrom, int(r.deliveredTo-r.deliveredFrom)-n.started)
	if !r.stopAt.IsZero() {
		figuref(t, "round %s: docker-compose stop workers took %s; the %d tasks it handed back all ran again within %s of docker-compose start workers",
			r.name, r.stopTook.Round(time.Millisecond), n.handedBack, r.rerunIn.Round(time.Millisecond))
	}
}

// composeRecord is one revision of a task's record, as a KV watch saw it.
type composeRecord struct {
	rev   uint64
	state forq.State
	at    time.Time
	op    jetstream.KeyValueOp
}

// recordWatch collects every revision of every record of forq_results.
type recordWatch struct {
	stopc chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	revs  map[string][]composeRecord
	last  uint64 // the latest revision seen
	err   error  // why the watch could not be made again
}

// watchRecords starts a KV watch of every record. A broker restart drops
// the watch's consumer, which the client would make again only after it
// missed heartbeats for a while, when revisions written meanwhile may be
// gone (the bucket keeps one per key): so on every reconnect the watch is
// made again at once, from the revision after the last one seen.
func watchRecords(t *testing.T, ctx context.Context, nc *nats.Conn, kv jetstream.KeyValue) *recordWatch {
	t.Helper()
	rw := &recordWatch{stopc: make(chan struct{}), done: make(chan struct{}), revs: map[string][]composeRecord{}}
	status := nc.StatusChanged(nats.CONNECTED)
	w, err := kv.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(rw.done)
		defer nc.RemoveStatusListener(status)
		for {
			if !rw.follow(w, status) {
				_ = w.Stop()
				return
			}
			_ = w.Stop()
			for range w.Updates() { // Stop closes it
			}
			for w = nil; w == nil; {
				rw.mu.Lock()
				opts := []jetstream.WatchOpt{jetstream.ResumeFromRevision(rw.last + 1)}
				rw.mu.Unlock()
				// JetStream may still be reading its streams back.
				if w, err = kv.WatchAll(ctx, opts...); err != nil {
					select {
					case <-rw.stopc:
						return
					case <-ctx.Done():
						rw.err = err
						return
					case <-time.After(100 * time.Millisecond):
					}
				}
			}
		}
	}()
	return rw
}

// follow records w's updates until a reconnect (true) or the end of the
// watch (false).
func (rw *recordWatch) follow(w jetstream.KeyWatcher, status <-chan nats.Status) bool {
	for {
		select {
		case <-rw.stopc:
			return false
		case <-status:
			return true
		case e, ok := <-w.Updates():
			if !ok {
				return true // dropped: make it again
			}
			if e == nil {
				continue // the end of the initial values
			}
			var res forq.Result
			_ = json.Unmarshal(e.Value(), &res)
			rw.mu.Lock()
			rw.revs[e.Key()] = append(rw.revs[e.Key()], composeRecord{rev: e.Revision(), state: res.State, at: e.Created(), op: e.Operation()})
			rw.last = max(rw.last, e.Revision())
			rw.mu.Unlock()
		}
	}
}

// stop stops the watch and returns what it saw, each key's revisions in
// order, each once. A record whose last revision seen is not the bucket's
// gets the bucket's appended, so that a missed update cannot pass for a
// good record.
func (rw *recordWatch) stop(t *testing.T, ctx context.Context, kv jetstream.KeyValue) map[string][]composeRecord {
	t.Helper()
	close(rw.stopc)
	select {
	case <-rw.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the KV watch did not stop")
	}
	if rw.err != nil {
		t.Errorf("the KV watch of the records stopped: %v", rw.err)
	}
	for k, revs := range rw.revs {
		sort.Slice(revs, func(i, j int) bool { return revs[i].rev < revs[j].rev })
		revs = slices.CompactFunc(revs, func(a, b composeRecord) bool { return a.rev == b.rev })
		e, err := kv.Get(ctx, k)
		if err != nil {
			t.Errorf("record %s: %v", k, err)
			continue
		}
		if len(revs) == 0 || revs[len(revs)-1].rev != e.Revision() {
			var res forq.Result
			_ = json.Unmarshal(e.Value(), &res)
			t.Logf("record %s: the watch missed revision %d (%s)", k, e.Revision(), res.State)
			revs = append(revs, composeRecord{rev: e.Revision(), state: res.State, at: e.Created(), op: e.Operation()})
		}
		rw.revs[k] = revs
	}
	return rw.revs
}

func describeRecord(revs []composeRecord) string {
	parts := make([]string, len(revs))
	for i, e := range revs {
		parts[i] = fmt.Sprintf("%d %s %s", e.rev, e.state, e.at.Format(time.TimeOnly+".000"))
		if e.op != jetstream.KeyValuePut {
			parts[i] += " " + e.op.String()
		}
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func describeRuns(rs []torture.TaskRun) string {
	var b strings.Builder
	for _, r := range rs {
		end := "no end"
		if !r.End.IsZero() {
			end = r.Outcome + " " + r.End.Format(time.TimeOnly+".000")
		}
		fmt.Fprintf(&b, "    run %s pid %d attempt %d: start %s, %s\n", r.Run, r.PID, r.Attempt, r.Start.Format(time.TimeOnly+".000"), end)
	}
	return b.String()
}

// composeWorkerGrace reads the "workers" service's FORQ_GRACE and
// stop_grace_period from the compose file.
func composeWorkerGrace(t *testing.T, file string) (grace, stop time.Duration) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n  workers:\n")
	if i < 0 {
		t.Fatalf("%s: no workers service", file)
	}
	s = s[i+1:]
	if j := regexp.MustCompile(`\n  [a-z]+:\n`).FindStringIndex(s[1:]); j != nil {
		s = s[:j[0]+1]
	}
	get := func(re string) time.Duration {
		m := regexp.MustCompile(re).FindStringSubmatch(s)
		if m == nil {
			t.Fatalf("%s: the workers service has no %s", file, re)
		}
		d, err := time.ParseDuration(strings.Trim(m[1], `"'`))
		if err != nil {
			t.Fatalf("%s: workers: %v", file, err)
		}
		return d
	}
	return get(`FORQ_GRACE: (\S+)`), get(`stop_grace_period: (\S+)`)
}

// sleepUntil sleeps until t.
func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }
