package admin_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forqhq/forq"
	"github.com/forqhq/forq/admin"
	"github.com/forqhq/forq/consumer"
	"github.com/forqhq/forq/internal/testutil"
	"github.com/forqhq/forq/internal/wire"
	"github.com/forqhq/forq/producer"
	"github.com/nats-io/nats.go"
)

// listed is a queue "lq" with one task of each kind: a running one (on a
// worker of this process, with a record), a normal and a high one
// queued (the queue is paused), and a delayed one.
type listed struct {
	b                            *bundle
	running, normal, high, later string
	long                         string    // the normal task's payload
	due                          time.Time // when the delayed one is due
	release                      func()    // lets the running one finish
}

func setupListed(t *testing.T) *listed {
	t.Helper()
	l := &listed{b: setup(t), long: strings.Repeat("0123456789", 30), due: time.Now().Add(time.Hour)}
	ctx := t.Context()
	p := l.b.producer(t)
	release := make(chan struct{})
	var once sync.Once
	l.release = func() { once.Do(func() { close(release) }) }
	l.b.worker(t, "lq", 1, func(ctx context.Context, task *consumer.Task) ([]byte, error) {
		if string(task.Payload) == "block" {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return nil, nil
	})
	t.Cleanup(l.release) // before the worker's stop, which waits for it
	l.running = enqueue(t, p, "block", producer.WithQueue("lq"), producer.WithRecord())
	testutil.Eventually(t, 10*time.Second, func() bool {
		got, err := l.b.in.Tasks(ctx, "lq", admin.WithState(admin.StateRunning))
		return err == nil && len(got) == 1 && got[0].ID == l.running
	}, "the blocking task is not listed as running")
	// Paused, the queue keeps what is enqueued from now on.
	if _, err := l.b.in.Pause(ctx, "lq", admin.PauseForever, 0); err != nil {
		t.Fatal(err)
	}
	l.normal = enqueue(t, p, l.long, producer.WithQueue("lq"), producer.WithMaxAttempts(7))
	l.high = enqueue(t, p, "urgent", producer.WithQueue("lq"), producer.WithPriority(forq.PriorityHigh))
	l.later = enqueue(t, p, "later", producer.WithQueue("lq"), producer.WithAt(l.due))
	return l
}

// states lists the tasks as "<state>:<id>".
func states(ts []admin.TaskInfo) string {
	var out []string
	for _, ti := range ts {
		out = append(out, string(ti.State)+":"+ti.ID)
	}
	return strings.Join(out, " ")
}

// describe says what a test checks of a listed task.
func describe(ti admin.TaskInfo) string {
	rec, wk := "none", "none"
	if ti.Record != nil {
		rec = fmt.Sprintf("%s/pid=%d", ti.Record.State, ti.Record.WorkerPID)
	}
	if ti.Worker != nil {
		wk = fmt.Sprintf("pid=%d/host=%t/started=%t", ti.Worker.PID, ti.Worker.Host != "", !ti.Worker.Started.IsZero())
	}
	return fmt.Sprintf("%s type=%s queue=%s prio=%s size=%d preview=%q attempts=%d/%d record=%s worker=%s", ti.State, ti.Type, ti.Queue, ti.Priority,
		ti.Size, ti.Preview, ti.Attempts, ti.MaxAttempts, rec, wk)
}

// Tasks lists a queue's running task (joined with its record), its queued
// ones by level and its delayed one, with bounded previews.
func TestTasks(t *testing.T) {
	l := setupListed(t)
	ctx := t.Context()
	got, err := l.b.in.Tasks(ctx, "lq")
	if err != nil {
		t.Fatal(err)
	}
	order := "running:" + l.running + " queued:" + l.high + " queued:" + l.normal + " scheduled:" + l.later
	if s := states(got); s != order {
		t.Fatalf("Tasks: got %s, want %s", s, order)
	}
	want := []string{
		fmt.Sprintf("running type=t queue=lq prio=normal size=5 preview=\"block\" attempts=1/3 record=running/pid=%d worker=pid=%d/host=true/started=true", os.Getpid(), os.Getpid()),
		`queued type=t queue=lq prio=high size=6 preview="urgent" attempts=0/3 record=none worker=none`,
		fmt.Sprintf("queued type=t queue=lq prio=normal size=300 preview=%q attempts=0/7 record=none worker=none", l.long[:admin.DefaultPreview]),
		`scheduled type=t queue=lq prio=normal size=5 preview="later" attempts=0/3 record=none worker=none`,
	}
	for i, ti := range got {
		if d := describe(ti); d != want[i] {
			t.Errorf("task %d: got %s, want %s", i, d, want[i])
		}
		if ti.Enqueued.IsZero() || ti.Seq == 0 {
			t.Errorf("task %d: enqueued %s, seq %d; want a time and a sequence", i, ti.Enqueued, ti.Seq)
		}
	}
	if due := got[3].Due; due.Sub(l.due).Abs() > time.Second {
		t.Errorf("scheduled task: due %s, want %s", due, l.due)
	}
	l.release()
	testutil.Eventually(t, 10*time.Second, func() bool {
		got, err := l.b.in.Tasks(ctx, "lq", admin.WithState(admin.StateRunning))
		return err == nil && len(got) == 0
	}, "the finished task is still listed as running")
}

// Tasks' options select the states, bound the count and the previews.
func TestTasksOptions(t *testing.T) {
	l := setupListed(t)
	all := []string{"running:" + l.running, "queued:" + l.high, "queued:" + l.normal, "scheduled:" + l.later}
	for _, c := range []struct {
		name    string
		opts    []admin.ListOption
		want    []string
		preview string // of the last task listed
	}{
		{"limit", []admin.ListOption{admin.WithLimit(2)}, all[:2], "urgent"},
		{"queued", []admin.ListOption{admin.WithState(admin.StateQueued)}, all[1:3], l.long[:admin.DefaultPreview]},
		{"scheduled and running", []admin.ListOption{admin.WithState(admin.StateScheduled, admin.StateRunning)}, []string{all[0], all[3]}, "later"},
		{"queued, limit 1", []admin.ListOption{admin.WithState(admin.StateQueued), admin.WithLimit(1)}, all[1:2], "urgent"},
		{"preview 4", []admin.ListOption{admin.WithState(admin.StateQueued), admin.WithPreview(4)}, all[1:3], "0123"},
		{"preview 0", []admin.ListOption{admin.WithPreview(0)}, all, ""},
	} {
		got, err := l.b.in.Tasks(t.Context(), "lq", c.opts...)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if s := states(got); s != strings.Join(c.want, " ") {
			t.Errorf("%s: got %s, want %v", c.name, s, c.want)
		}
		if last := got[len(got)-1]; last.Preview == nil || string(last.Preview) != c.preview {
			t.Errorf("%s: preview %q, want %q", c.name, last.Preview, c.preview)
		}
	}
}

// WithType lists only the tasks of the types asked for.
func TestTasksByType(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	p := b.producer(t)
	a1 := enqueue(t, p, "1", producer.WithQueue("ty"))
	info, err := p.Enqueue(ctx, forq.Task{Type: "u", Payload: []byte("2")}, producer.WithQueue("ty"))
	if err != nil {
		t.Fatal(err)
	}
	a3 := enqueue(t, p, "3", producer.WithQueue("ty"), producer.WithDelay(time.Hour))
	for _, c := range []struct {
		types []string
		want  string
	}{
		{[]string{"t"}, "queued:" + a1 + " scheduled:" + a3},
		{[]string{"u"}, "queued:" + info.ID},
		{[]string{"u", "t"}, "queued:" + a1 + " queued:" + info.ID + " scheduled:" + a3},
		{[]string{"v"}, ""},
	} {
		got, err := b.in.Tasks(ctx, "ty", admin.WithType(c.types...))
		if err != nil || states(got) != c.want {
			t.Errorf("types %v: %s, %v; want %s", c.types, states(got), err, c.want)
		}
	}
	got, err := b.in.Tasks(ctx, "ty", admin.WithType("t"), admin.WithLimit(1))
	if err != nil || states(got) != "queued:"+a1 {
		t.Errorf("type t, limit 1: %s, %v; want %s", states(got), err, a1)
	}
}

// Tasks refuses bad options and an unknown queue, naming them, and knows
// a queue that has tasks but no consumer.
func TestTasksBadInput(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	p := b.producer(t)
	for name, opt := range map[string]admin.ListOption{
		"limit 0":          admin.WithLimit(0),
		"negative preview": admin.WithPreview(-1),
		"no state":         admin.WithState(),
		"unknown state":    admin.WithState("done"),
		"no type":          admin.WithType(),
		"bad type":         admin.WithType("a b"),
	} {
		_, err := b.in.Tasks(ctx, "q", opt)
		wantErr(t, name, err, forq.ErrInvalidOption)
	}
	if _, err := admin.ParseTaskState("dead"); err == nil || !strings.Contains(err.Error(), `"dead"`) {
		t.Errorf("ParseTaskState(dead): %v; want an error naming it", err)
	}
	_, err := b.in.Tasks(ctx, "nosuchqueue")
	wantErr(t, "unknown queue", err, admin.ErrNoQueue, "nosuchqueue")

	// No consumer, one delayed task: a queue all the same.
	id := enqueue(t, p, "x", producer.WithQueue("fresh"), producer.WithDelay(time.Hour))
	got, err := b.in.Tasks(ctx, "fresh", admin.WithState(admin.StateQueued))
	if err != nil || len(got) != 0 {
		t.Errorf("Tasks(fresh, queued): %v, %v; want none", got, err)
	}
	got, err = b.in.Tasks(ctx, "fresh")
	if err != nil || len(got) != 1 || got[0].ID != id || got[0].State != admin.StateScheduled {
		t.Errorf("Tasks(fresh): %+v, %v; want the delayed task %s", got, err, id)
	}
}

// A task published without an ID (by hand, or a periodic tick) is listed
// as "seq-<sequence>", the name its worker gives it.
func TestTasksWithoutID(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	b.producer(t) // declares the streams
	m := &nats.Msg{Subject: wire.TaskSubject("raw"), Header: nats.Header{"Forq-Type": []string{"t"}}, Data: []byte("hi")}
	ack, err := b.js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.in.Tasks(ctx, "raw")
	if err != nil || len(got) != 1 || got[0].ID != "seq-"+strconv.FormatUint(ack.Sequence, 10) || got[0].State != admin.StateQueued {
		t.Errorf("Tasks(raw): %+v, %v; want seq-%d queued", got, err, ack.Sequence)
	}
}

// PurgeQueue drops the queued tasks of every level and leaves the delayed
// ones.
func TestPurgeQueue(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	p := b.producer(t)
	for _, prio := range forq.Priorities {
		enqueue(t, p, "x", producer.WithQueue("pq"), producer.WithPriority(prio))
		enqueue(t, p, "y", producer.WithQueue("pq"), producer.WithPriority(prio))
	}
	later := enqueue(t, p, "later", producer.WithQueue("pq"), producer.WithDelay(time.Hour))
	keep := enqueue(t, p, "keep", producer.WithQueue("pq2"))
	n, err := b.in.PurgeQueue(ctx, "pq")
	if err != nil || n != 6 {
		t.Fatalf("PurgeQueue: %d, %v; want 6", n, err)
	}
	got, err := b.in.Tasks(ctx, "pq")
	if err != nil || len(got) != 1 || got[0].ID != later {
		t.Errorf("after the purge: %+v, %v; want only the delayed task", got, err)
	}
	if got, err := b.in.Tasks(ctx, "pq2"); err != nil || len(got) != 1 || got[0].ID != keep {
		t.Errorf("another queue: %+v, %v; want its task kept", got, err)
	}
	if n, err := b.in.PurgeQueue(ctx, "pq"); n != 0 || err != nil {
		t.Errorf("second purge: %d, %v; want 0", n, err)
	}
}

// A task waiting for its retry after a failed attempt is delivered and not
// acknowledged, but no worker runs it: retrying, in Tasks and Stats; its
// record says it failed, with the attempt's error in its history.
func TestTasksRetryWaitIsRetrying(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	p := b.producer(t)
	w, err := consumer.New(ctx, b.nc, consumer.Config{Queues: []string{"rq"}, Concurrency: 1, RetryBase: time.Hour, RetryMax: time.Hour,
		StatusInterval: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	w.HandleFunc("t", func(ctx context.Context, task *consumer.Task) ([]byte, error) { return nil, errors.New("not yet") })
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	id := enqueue(t, p, "x", producer.WithQueue("rq"), producer.WithRecord())
	testutil.Eventually(t, 10*time.Second, func() bool {
		r, err := p.Result(ctx, id)
		return err == nil && r.State == forq.StateFailed
	}, "the first attempt did not fail")
	// The worker's status says what it runs a status interval later.
	testutil.Eventually(t, 10*time.Second, func() bool {
		st, err := b.in.Stats(ctx, "rq")
		return err == nil && len(st.Workers) == 1 && len(st.Workers[0].Running) == 0
	}, "the worker's status still lists the failed task")
	got, err := b.in.Tasks(ctx, "rq")
	if err != nil || len(got) != 1 || got[0].State != admin.StateRetrying || got[0].Worker != nil || got[0].Record == nil ||
		got[0].Record.State != forq.StateFailed || len(got[0].Record.History) != 1 || got[0].Record.History[0].Error != "not yet" {
		t.Fatalf("Tasks: %+v, %v; want the task retrying, its record failed with attempt 1's error", got, err)
	}
	if st, err := b.in.Stats(ctx, "rq"); err != nil || st.Queues[0].Running != 0 || st.Queues[0].Retrying != 1 || st.Queues[0].Unacked != 1 || st.Queues[0].Queued != 0 {
		t.Errorf("Stats: %+v, %v; want 0 running, 1 retrying, 1 unacked, 0 queued", st, err)
	}
}
