package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// connectLikeCLI connects to url as forq's commands do: reconnecting for
// ever, every 250 ms.
func connectLikeCLI(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// history is what producers saw acknowledged, with when.
type history struct {
	mu   sync.Mutex
	ok   map[string]time.Time // task ID → when its enqueue returned nil
	errs []string
}

// send enqueues tasks with the IDs prefix0, prefix1, ... to queue, each
// with 30 s to be acknowledged, until stop is closed, and notes each
// outcome in h.
func (h *history) send(p *producer.Producer, queue, prefix string, payload []byte, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		id := prefix + strconv.Itoa(i)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := p.Enqueue(ctx, forq.Task{Type: "wordcount", Payload: payload}, producer.WithID(id), producer.WithQueue(queue))
		cancel()
		h.mu.Lock()
		if err != nil {
			h.errs = append(h.errs, fmt.Sprintf("%s: %v", id, err))
		} else {
			h.ok[id] = time.Now()
		}
		h.mu.Unlock()
	}
}

// worstResume is the longest time from a broker start (readyAt) to the
// first enqueue acknowledged after it; a start with none after it fails
// the test.
func (h *history) worstResume(t *testing.T, readyAt []time.Time) time.Duration {
	t.Helper()
	h.mu.Lock()
	oks := slices.Collect(maps.Values(h.ok))
	h.mu.Unlock()
	slices.SortFunc(oks, func(a, b time.Time) int { return a.Compare(b) })
	var worst time.Duration
	for i, ready := range readyAt {
		j := sort.Search(len(oks), func(k int) bool { return oks[k].After(ready) })
		if j == len(oks) {
			t.Errorf("no enqueue was accepted after broker start %d", i+1)
			continue
		}
		worst = max(worst, oks[j].Sub(ready))
	}
	return worst
}

// Broker kills: the broker process is SIGKILLed 10 times and SIGTERMed 5
// times, first while producers enqueue tasks with fixed IDs, then while
// workers drain them. Every acknowledged task is processed, the stream
// holds each task once, and enqueues are accepted again within 1 s of the
// broker being ready.
func TestBrokerKillsDuringEnqueueAndDrain(t *testing.T) {
	b := startBroker(t, "", 0)
	dir, port := b.dir, b.port
	nc := connectLikeCLI(t, b.url)
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	const queue = "kills"
	// The faults: 5 while enqueueing (3 KILL, 2 TERM), 10 while draining
	// (7 KILL, 3 TERM), in a random order within each phase.
	phases := [][]syscall.Signal{
		{syscall.SIGKILL, syscall.SIGKILL, syscall.SIGKILL, syscall.SIGTERM, syscall.SIGTERM},
		{syscall.SIGKILL, syscall.SIGKILL, syscall.SIGKILL, syscall.SIGKILL, syscall.SIGKILL, syscall.SIGKILL, syscall.SIGKILL, syscall.SIGTERM, syscall.SIGTERM, syscall.SIGTERM},
	}
	for _, ph := range phases {
		rand.Shuffle(len(ph), func(i, j int) { ph[i], ph[j] = ph[j], ph[i] })
	}
	var readyAt []time.Time
	// fault kills or stops the broker, keeps it down a moment and starts
	// it again on the same data directory and port.
	fault := func(sig syscall.Signal) {
		b.signal(sig)
		if code := b.wait(30 * time.Second); sig == syscall.SIGTERM && code != 0 {
			t.Errorf("broker exit code %d after SIGTERM, want 0", code)
		}
		time.Sleep(time.Duration(rand.N(300)) * time.Millisecond)
		b = startBroker(t, dir, port)
		readyAt = append(readyAt, time.Now())
	}

	// Phase 1: enqueue with fixed IDs through 5 faults.
	h := &history{ok: map[string]time.Time{}}
	payload, _ := json.Marshal(map[string]string{"text": "one two three"})
	stop := make(chan struct{})
	var senders sync.WaitGroup
	for g := range 4 {
		senders.Go(func() { h.send(p, queue, fmt.Sprintf("k%d-", g), payload, stop) })
	}
	for _, sig := range phases[0] {
		time.Sleep(500*time.Millisecond + time.Duration(rand.N(700))*time.Millisecond)
		fault(sig)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	senders.Wait()
	js := b.js(t)
	h.mu.Lock()
	acked := len(h.ok)
	h.mu.Unlock()
	if len(h.errs) > 0 {
		t.Errorf("%d enqueues failed (each had 30 s); first: %s", len(h.errs), h.errs[0])
	}
	if n := streamMsgs(t, js, forq.StreamTasks, wire.TaskSubject(queue)); int(n) != acked {
		t.Errorf("after the enqueue phase %s holds %d tasks, want %d: one per acknowledged enqueue, no duplicate", forq.StreamTasks, n, acked)
	}
	// Enqueues resumed within 1 s of each broker start.
	worst := h.worstResume(t, readyAt)
	if worst > 1500*time.Millisecond {
		t.Errorf("enqueues were accepted again %s after the broker was ready; want within 1s", worst.Round(time.Millisecond))
	}
	figuref(t, "enqueue phase: %d tasks acknowledged by 4 producers over %d broker faults; %d failed; stream holds %d; enqueues accepted again at most %s after the broker was ready",
		acked, len(phases[0]), len(h.errs), streamMsgs(t, js, forq.StreamTasks, wire.TaskSubject(queue)), worst.Round(time.Millisecond))

	// Phase 2: drain through 10 faults.
	env := []string{"FORQ_URL=" + b.url}
	workers := []*proc{
		start(t, "worker", env, "-queue", queue, "-concurrency", "8", "-work", "10ms"),
		start(t, "worker", env, "-queue", queue, "-concurrency", "8", "-work", "10ms"),
	}
	doneIDs := func() map[string]int {
		m := map[string]int{}
		for _, w := range workers {
			for _, id := range w.lines("done ") {
				m[id]++
			}
		}
		return m
	}
	drainStart := time.Now()
	for _, sig := range phases[1] {
		time.Sleep(500*time.Millisecond + time.Duration(rand.N(700))*time.Millisecond)
		fault(sig)
	}
	faultsOver := time.Now()
	left := 0
	eventually(t, 120*time.Second, func() bool {
		done := doneIDs()
		left = 0
		for id := range h.ok {
			if done[id] == 0 {
				left++
			}
		}
		return left == 0
	}, "acknowledged tasks never processed: %d of %d", left, acked)
	done := doneIDs()
	runs, twice := 0, 0
	for _, n := range done {
		runs += n
		if n > 1 {
			twice++
		}
	}
	if len(done) != acked {
		t.Errorf("workers processed %d distinct tasks, want the %d acknowledged", len(done), acked)
	}
	kills, terms := 0, 0
	for _, ph := range phases {
		for _, sig := range ph {
			if sig == syscall.SIGKILL {
				kills++
			} else {
				terms++
			}
		}
	}
	figuref(t, "drain phase: %d acknowledged tasks all processed through %d broker faults (%d KILL, %d TERM over both phases), %d runs, %d tasks run more than once (acks lost with a killed broker), drained %s after the faults (%s in all)",
		acked, len(phases[1]), kills, terms, runs, twice, time.Since(faultsOver).Round(time.Millisecond), time.Since(drainStart).Round(time.Millisecond))
}

// taskRun is one run of a task, from a worker's history file.
type taskRun struct {
	id         string
	start, end time.Time
}

func (r taskRun) String() string {
	end := "running"
	if !r.end.IsZero() {
		end = r.end.Format("15:04:05.000")
	}
	return r.start.Format("15:04:05.000") + "–" + end
}

// readRuns reads the lines "start|end ID UNIXNANO" that exec tasks append
// to path.
func readRuns(t *testing.T, path string) map[string][]taskRun {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatal(err)
	}
	defer f.Close()
	open := map[string][]int{}
	out := map[string][]taskRun{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		ns, _ := strconv.ParseInt(f[2], 10, 64)
		at := time.Unix(0, ns)
		switch f[0] {
		case "start":
			out[f[1]] = append(out[f[1]], taskRun{id: f[1], start: at})
			open[f[1]] = append(open[f[1]], len(out[f[1]])-1)
		case "end":
			if o := open[f[1]]; len(o) > 0 {
				out[f[1]][o[0]].end = at
				open[f[1]] = o[1:]
			}
		}
	}
	return out
}

// Broker restarts, SIGTERM and SIGKILL, while tasks older than the ack
// wait run in worker processes: no task runs twice at once, every waiter
// sees its task's success as soon as it ends, and no record moves back
// from succeeded.
func TestBrokerRestartWhileOldTasksRun(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			b := startBroker(t, "", 0)
			nc := connectLikeCLI(t, b.url)
			p, err := producer.New(t.Context(), nc, producer.Config{})
			if err != nil {
				t.Fatal(err)
			}
			hist := filepath.Join(t.TempDir(), "runs")
			const n, work = 12, 8 * time.Second
			script := fmt.Sprintf(`echo start $0 $(date +%%s%%N) >> %s; sleep %g; echo end $0 $(date +%%s%%N) >> %s`, hist, work.Seconds(), hist)
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("old-%d", i)
				spec, _ := json.Marshal(forq.ExecSpec{Argv: []string{"sh", "-c", script, ids[i]}})
				if _, err := p.Enqueue(t.Context(), forq.Task{Type: forq.TypeExec, Payload: spec}, producer.WithID(ids[i]), producer.WithRecord()); err != nil {
					t.Fatal(err)
				}
			}
			// Older than the ack wait before any worker takes them.
			time.Sleep(forq.DefaultAckWait + 500*time.Millisecond)
			// Record every state each task's record goes through.
			states := watchStates(t, nc)
			type seen struct {
				at    time.Time
				state forq.State
				err   error
			}
			waits := make([]seen, n)
			var wg sync.WaitGroup
			for i, id := range ids {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
					defer cancel()
					r, err := p.Wait(ctx, id)
					waits[i] = seen{at: time.Now(), err: err}
					if r != nil {
						waits[i].state = r.State
					}
				})
			}
			env := []string{"FORQ_URL=" + b.url}
			// Two worker processes, each with more slots than tasks: a
			// redelivered task finds a free slot at once.
			for range 2 {
				start(t, "forq", env, "work", "--allow-exec", "--concurrency", strconv.Itoa(2*n))
			}
			eventually(t, 20*time.Second, func() bool { return len(readRuns(t, hist)) == n }, "the %d tasks never all started", n)
			// The broker writes a consumer's state about ten times a
			// second: a task delivered within that tenth of a second
			// before a SIGKILL comes back as a first delivery, which is
			// not fenced (README: When the broker restarts, what is not
			// promised). So the kill comes 0.3 s after the last start,
			// still before the runs' first heartbeat (a third of the ack
			// wait in), when the broker has the deliveries on disk.
			time.Sleep(300 * time.Millisecond)
			b.signal(sig)
			b.wait(30 * time.Second)
			startBroker(t, b.dir, b.port) // back, for the waits and the runs to end
			wg.Wait()
			time.Sleep(2 * forq.DefaultAckWait) // room for a late second run
			runs := readRuns(t, hist)
			for i, id := range ids {
				rs := runs[id]
				if len(rs) != 1 || rs[0].end.IsZero() {
					t.Errorf("%s: %d runs %v; want one, ended", id, len(rs), rs)
					continue
				}
				late := waits[i].at.Sub(rs[0].end)
				if waits[i].err != nil || waits[i].state != forq.StateSucceeded || late > 2*time.Second {
					t.Errorf("%s: waiter got %s %v %s after the run ended; want succeeded at once", id, waits[i].state, waits[i].err, late.Round(time.Millisecond))
				}
			}
			overlaps := 0
			for _, rs := range runs {
				for i := 1; i < len(rs); i++ {
					if rs[i].end.IsZero() || rs[i].start.Before(rs[i-1].end) {
						overlaps++
					}
				}
			}
			back := states.backFromFinal()
			if len(back) > 0 {
				t.Errorf("records moved back from a final state: %v", back)
			}
			var worst time.Duration
			for i, id := range ids {
				if rs := runs[id]; len(rs) == 1 {
					worst = max(worst, waits[i].at.Sub(rs[0].end))
				}
			}
			figuref(t, "%s: %d tasks %s old running in 2 worker processes when the broker restarted: %d runs in all, %d overlapping, slowest waiter %s after its run ended, %d records moved back from a final state",
				sig, n, forq.DefaultAckWait+500*time.Millisecond, countRuns(runs), overlaps, worst.Round(time.Millisecond), len(back))
		})
	}
}

func countRuns(runs map[string][]taskRun) int {
	n := 0
	for _, rs := range runs {
		n += len(rs)
	}
	return n
}

// stateLog is every state each record was seen in, in order.
type stateLog struct {
	mu sync.Mutex
	by map[string][]forq.State
}

// backFromFinal lists the records seen in another state after a final
// one.
func (l *stateLog) backFromFinal() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id, ss := range l.by {
		for i := 1; i < len(ss); i++ {
			if ss[i-1].Final() && ss[i] != ss[i-1] {
				out = append(out, fmt.Sprintf("%s: %v", id, ss))
				break
			}
		}
	}
	return out
}

// watchStates watches forq_results for the rest of the test, watching
// again whenever the connection drops (a watch does not survive a broker
// restart by itself for seconds).
func watchStates(t *testing.T, nc *nats.Conn) *stateLog {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	l := &stateLog{by: map[string][]forq.State{}}
	ctx, cancel := context.WithCancel(context.Background())
	drops := nc.StatusChanged(nats.CONNECTED)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); nc.RemoveStatusListener(drops); wg.Wait() })
	wg.Go(func() {
		for ctx.Err() == nil {
			kv, err := js.KeyValue(ctx, forq.BucketResults)
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			w, err := kv.WatchAll(ctx)
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
		watch:
			for {
				select {
				case <-ctx.Done():
					break watch
				case <-drops:
					break watch
				case e, ok := <-w.Updates():
					if !ok {
						break watch
					}
					if e == nil || e.Operation() != jetstream.KeyValuePut {
						continue
					}
					var r forq.Result
					if json.Unmarshal(e.Value(), &r) != nil {
						continue
					}
					l.mu.Lock()
					ss := l.by[e.Key()]
					// A watch started again replays the last value.
					if len(ss) == 0 || ss[len(ss)-1] != r.State {
						l.by[e.Key()] = append(ss, r.State)
					}
					l.mu.Unlock()
				}
			}
			_ = w.Stop()
		}
	})
	return l
}

// A task whose worker process is SIGKILLed runs again on another worker
// within 5 s, with the default ack wait.
func TestKilledWorkersTaskRunsAgainWithin5s(t *testing.T) {
	b := startBroker(t, "", 0)
	nc := connectLikeCLI(t, b.url)
	p, err := producer.New(t.Context(), nc, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"FORQ_URL=" + b.url}
	const rounds = 3
	var worst time.Duration
	for i := range rounds {
		queue := fmt.Sprintf("killed%d", i)
		first := start(t, "forq", env, "work", "-q", queue)
		eventually(t, 20*time.Second, func() bool { return strings.Contains(first.stderr(), "worker started") }, "worker did not start: %s", first.stderr())
		info, err := p.Enqueue(t.Context(), forq.Task{Type: "sleep", Payload: []byte("30s")}, producer.WithQueue(queue), producer.WithRecord())
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, func() bool {
			r, err := p.Result(t.Context(), info.ID)
			return err == nil && r.State == forq.StateRunning && r.WorkerPID == first.cmd.Process.Pid
		}, "the first worker never started the task")
		// Run a while, past its first heartbeats.
		time.Sleep(time.Duration(1500+rand.N(2000)) * time.Millisecond)
		second := start(t, "forq", env, "work", "-q", queue)
		first.signal(syscall.SIGKILL)
		killed := time.Now()
		first.wait(10 * time.Second)
		var again time.Time
		eventually(t, 30*time.Second, func() bool {
			r, err := p.Result(t.Context(), info.ID)
			if err == nil && r.State == forq.StateRunning && r.WorkerPID == second.cmd.Process.Pid {
				again = r.StartedAt
				return true
			}
			return false
		}, "the task never ran again")
		after := again.Sub(killed)
		worst = max(worst, after)
		if after > 5*time.Second {
			t.Errorf("round %d: the task ran again %s after its worker was killed; want within 5s", i, after.Round(time.Millisecond))
		}
		figuref(t, "round %d: ran again %s after its worker was SIGKILLed (ack wait %s)", i, after.Round(time.Millisecond), forq.DefaultAckWait)
		second.signal(syscall.SIGKILL)
	}
	figuref(t, "%d kills: the killed worker's task ran again at most %s later", rounds, worst.Round(time.Millisecond))
}
